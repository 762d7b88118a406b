"""Retention against a reference model: random histories (times, statuses, chains, owners)
and rules; the decision equals the model's and the invariants always hold."""
from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from orchestrator.policies import retention
from orchestrator.policies.retention import Item
from orchestrator.policies.retention import Rules
from orchestrator.policies.schedule import UTC
from orchestrator.policies.schedule import zone

NOW = dt.datetime(2026, 11, 30, 12, 0, 0)
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata")
STATUSES = ("available",) * 6 + ("error", "error", "creating", "restoring")


# ----------------------------------------------------------------------------- the model


def _model_period(rule: str, when: dt.datetime, tz) -> object:
    """A period as a different construction than the code's: the local start of it."""
    local = when.replace(tzinfo=UTC).astimezone(tz).replace(tzinfo=None)
    if rule == "keep_hourly":
        return local.replace(minute=0, second=0, microsecond=0)
    if rule == "keep_daily":
        return local.date()
    if rule == "keep_weekly":
        return local.date() - dt.timedelta(days=local.weekday())  # that week's Monday
    if rule == "keep_monthly":
        return local.date().replace(day=1)
    return local.date().replace(month=1, day=1)


def model_rule_keeps(candidates, rules: Rules, now, tz) -> dict[str, list[str]]:
    """keep_* by grouping: the N latest periods that hold a candidate, newest of each."""
    kept: dict[str, list[str]] = {}
    ordered = sorted(candidates, key=lambda b: (b.created_at, b.id), reverse=True)
    for b in ordered[:rules.keep_last]:
        kept.setdefault(b.id, []).append("keep_last")
    for rule in retention.PERIOD_RULES:
        groups: dict[object, list[Item]] = {}
        for b in ordered:
            groups.setdefault(_model_period(rule, b.created_at, tz), []).append(b)
        latest = sorted(groups, reverse=True)[:getattr(rules, rule)]
        for period in latest:
            newest = max(groups[period], key=lambda b: (b.created_at, b.id))
            kept.setdefault(newest.id, []).append(rule)
    for b in ordered:
        if rules.keep_within_seconds and \
                (now - b.created_at).total_seconds() < rules.keep_within_seconds:
            kept.setdefault(b.id, []).append("keep_within_seconds")
    return kept


def model(items: list[Item], rules: Rules, tz_name: str, any_delete: bool
          ) -> tuple[set[str], set[str], dict[str, set[str]]]:
    """(kept ids, deleted ids, keep_* rules by id) of owned backups, by fixpoint."""
    tz = zone(tz_name)
    by_id = {b.id: b for b in items}
    rules_by: dict[str, set[str]] = {}
    kept: set[str] = set()
    for volume in {b.volume_id for b in items}:
        members = [b for b in items if b.volume_id == volume]
        candidates = [b for b in members if b.owned and b.status == "available"]
        for bid, why in model_rule_keeps(candidates, rules, NOW, tz).items():
            rules_by.setdefault(bid, set()).update(why)
            kept.add(bid)
        if candidates:
            kept.add(max(candidates, key=lambda b: (b.created_at, b.id)).id)
    kept |= {b.id for b in items if b.owned and (b.busy or b.status not in ("available",
                                                                           "error"))}
    blockers = set(kept) | ({b.id for b in items if not b.owned} if not any_delete else set())
    changed = True
    while changed:
        changed = False
        for bid in list(blockers):
            parent = by_id[bid].parent_id
            if parent in by_id and parent not in blockers:
                blockers.add(parent)
                changed = True
    owned = {b.id for b in items if b.owned}
    kept = blockers & owned
    return kept, owned - kept, rules_by


# ----------------------------------------------------------------------------- histories


@st.composite
def histories(draw):
    items: list[Item] = []
    for v in range(draw(st.integers(1, 3))):
        count = draw(st.integers(0, 14))
        for i in range(count):
            # Hours back over ~3 years, often close together (same hour, day, week).
            hours = draw(st.one_of(st.integers(0, 72), st.integers(0, 3 * 366 * 24)))
            minutes = draw(st.integers(0, 59))
            earlier = [b.id for b in items if b.volume_id == f"v{v}"]
            parent = draw(st.one_of(st.none(), st.sampled_from(earlier))) if earlier else None
            items.append(Item(
                id=f"v{v}-b{i:02d}", volume_id=f"v{v}",
                created_at=NOW - dt.timedelta(hours=hours, minutes=minutes),
                status=draw(st.sampled_from(STATUSES)), parent_id=parent,
                busy=draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()),
                owned=draw(st.integers(0, 9)) > 0))
    return items


rule_sets = st.builds(
    Rules, keep_last=st.integers(0, 4), keep_hourly=st.integers(0, 4),
    keep_daily=st.integers(0, 5), keep_weekly=st.integers(0, 4),
    keep_monthly=st.integers(0, 4), keep_yearly=st.integers(0, 3),
    keep_within_seconds=st.sampled_from([0, 0, 3600, 86400, 7 * 86400]))


@hsettings(max_examples=400, deadline=None)
@given(histories(), rule_sets, st.sampled_from(ZONES), st.booleans())
def test_decision_equals_the_reference_model(items, rules, tz_name, any_delete):
    decision = retention.decide(items, rules, now=NOW, timezone=tz_name, any_delete=any_delete)
    kept, deleted, rules_by = model(items, rules, tz_name, any_delete)
    assert set(decision.keep) == kept
    assert set(decision.delete) == deleted
    for bid, reasons in decision.keep.items():
        assert {r for r in reasons if r in retention.RULE_NAMES} == rules_by.get(bid, set())


@hsettings(max_examples=400, deadline=None)
@given(histories(), rule_sets, st.sampled_from(ZONES), st.booleans())
def test_invariants_always_hold(items, rules, tz_name, any_delete):
    decision = retention.decide(items, rules, now=NOW, timezone=tz_name, any_delete=any_delete)
    by_id = {b.id: b for b in items}
    owned = {b.id for b in items if b.owned}
    # Every owned backup decided once; nothing of another owner touched.
    assert set(decision.keep) | set(decision.delete) == owned
    assert not set(decision.keep) & set(decision.delete)
    for volume in {b.volume_id for b in items}:
        available = [b for b in items if b.volume_id == volume and b.owned and
                     b.status == "available"]
        if available:
            newest = max(available, key=lambda b: (b.created_at, b.id))
            assert newest.id in decision.keep and "newest_available" in decision.keep[newest.id]
    for bid in decision.keep:  # what a kept backup depends on is kept, up the chain
        parent = by_id[bid].parent_id
        while parent in by_id:
            if by_id[parent].owned:
                assert parent in decision.keep, (bid, parent)
            parent = by_id[parent].parent_id
    for b in items:
        if b.owned and (b.busy or b.status == "restoring"):
            assert b.id in decision.keep
        if b.owned and b.status == "error" and b.id in decision.keep:
            assert not set(decision.keep[b.id]) & set(retention.RULE_NAMES)
    for name in ("keep_last", *retention.PERIOD_RULES):
        for volume in {b.volume_id for b in items}:
            n = sum(1 for bid, r in decision.keep.items()
                    if name in r and by_id[bid].volume_id == volume)
            assert n <= getattr(rules, name)
    deletes = list(decision.delete)
    times = [(by_id[b].created_at, b) for b in deletes]
    assert times == sorted(times, reverse=True)  # newest first: dependents before parents
    if not any_delete:
        for b in items:  # chain rule: nothing deleted under a dependent that stays
            if b.parent_id in decision.delete:
                assert b.id in decision.delete


def _item(name, when, status="available", parent=None, **kw):
    return Item(id=name, volume_id="v", created_at=when, status=status, parent_id=parent, **kw)


def test_keep_daily_counts_days_that_have_a_backup_in_the_policy_time_zone():
    # 23:30 UTC on the 27th is already the 28th in Berlin (UTC+1 in November).
    items = [_item("a", dt.datetime(2026, 11, 29, 8)), _item("b", dt.datetime(2026, 11, 29, 1)),
             _item("c", dt.datetime(2026, 11, 27, 23, 30)),
             _item("d", dt.datetime(2026, 11, 27, 10)),
             _item("e", dt.datetime(2026, 11, 20, 10))]
    utc = retention.decide(items, Rules(keep_daily=2), now=NOW, timezone="UTC")
    assert set(utc.keep) == {"a", "c"} and utc.keep["c"] == ["keep_daily"]
    berlin = retention.decide(items, Rules(keep_daily=3), now=NOW, timezone="Europe/Berlin")
    # Berlin days: 29th (a, b), 28th (c), 27th (d): the newest of each; the gap days skip.
    assert set(berlin.keep) == {"a", "c", "d"}
    assert berlin.delete == {"b": "no_rule", "e": "no_rule"}


def test_errors_never_count_and_the_newest_available_is_always_kept():
    items = [_item("failed", NOW - dt.timedelta(hours=1), status="error"),
             _item("ok", NOW - dt.timedelta(days=400))]
    d = retention.decide(items, Rules(keep_last=1, keep_within_seconds=7200), now=NOW)
    assert d.keep == {"ok": ["keep_last", "newest_available"]}
    assert d.delete == {"failed": "error"}


def test_a_chain_is_kept_under_a_kept_incremental_and_deleted_child_first():
    items = [_item("full", NOW - dt.timedelta(days=3)),
             _item("inc1", NOW - dt.timedelta(days=2), parent="full"),
             _item("inc2", NOW - dt.timedelta(days=1), parent="inc1"),
             _item("new", NOW - dt.timedelta(hours=1))]
    d = retention.decide(items, Rules(keep_last=1), now=NOW)
    assert list(d.delete) == ["inc2", "inc1", "full"]
    items[3] = _item("new", NOW - dt.timedelta(hours=1), parent="inc2")
    d = retention.decide(items, Rules(keep_last=1), now=NOW)
    assert d.keep["inc1"] == ["parent_of_kept"] and not d.delete


def test_a_manual_dependent_keeps_its_parent_until_any_backup_is_deletable():
    items = [_item("full", NOW - dt.timedelta(days=3)),
             _item("manual", NOW - dt.timedelta(days=2), parent="full", owned=False),
             _item("new", NOW - dt.timedelta(hours=1))]
    assert retention.decide(items, Rules(keep_last=1), now=NOW).keep["full"] == \
        ["has_dependents"]
    assert retention.decide(items, Rules(keep_last=1), now=NOW, any_delete=True).delete == \
        {"full": "no_rule"}
