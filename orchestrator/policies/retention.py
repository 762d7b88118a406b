"""Retention: which backups a prune keeps and why, as a pure function.

``decide(items, rules, now=, timezone=, any_delete=)`` takes every live
backup of the volumes a policy manages (its own, marked ``owned``, and the
others, which it never deletes) and answers, for each backup the policy
owns, either the rules that keep it or the reason it is deleted. The rules
(docs/policies.md has the user's version):

* Only ``available`` backups the policy owns are candidates: a backup in
  ``error`` never counts toward any ``keep_*`` (it is deleted unless
  something else keeps it), one in progress is never touched.
* ``keep_last N``: the N newest candidates of the volume.
* ``keep_hourly/daily/weekly/monthly/yearly N``: walk the candidates from
  the newest; each one whose period (the hour, calendar day, ISO week,
  month or year of its ``created_at`` on the policy time zone's wall clock)
  differs from the previous candidate's starts a period, and the first N
  periods that have a backup keep their newest one. Periods without a
  backup do not count (restic's and Proxmox's meaning).
* ``keep_within_seconds S``: every candidate created in the last S seconds.
* Always kept, whatever the rules say: the newest available backup of each
  volume (``newest_available``); a backup being restored, verified or
  worked on by a job (``in_use``); one in a transient status
  (``in_progress``); every backup a kept one depends on, up its parent
  chain (``parent_of_kept``).
* Unless any backup may be deleted (``any_delete``): a backup with a live
  dependent that this prune does not delete is kept (``has_dependents``);
  dependents are deleted first (the delete list is newest first).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field

from orchestrator.policies.schedule import UTC
from orchestrator.policies.schedule import zone

AVAILABLE = "available"
ERROR = "error"
RESTORING = "restoring"
PERIOD_RULES = ("keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
RULE_NAMES = ("keep_last", *PERIOD_RULES, "keep_within_seconds")
# Invariant reasons, in the order they are listed after the rules.
NEWEST = "newest_available"
IN_USE = "in_use"
IN_PROGRESS = "in_progress"
PARENT_OF_KEPT = "parent_of_kept"
HAS_DEPENDENTS = "has_dependents"
# Delete reasons.
NO_RULE = "no_rule"          # an available backup no rule keeps
IN_ERROR = "error"           # a failed backup (never counted, nothing keeps it)


@dataclass(frozen=True)
class Item:
    """One live backup as retention sees it."""

    id: str
    volume_id: str
    created_at: dt.datetime           # naive UTC
    status: str
    parent_id: str | None = None
    busy: bool = False                # restoring, verifying, or a job works on it
    owned: bool = True                # created by this policy (only those are pruned)


@dataclass(frozen=True)
class Rules:
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within_seconds: int = 0

    @classmethod
    def of(cls, retention: dict | None) -> Rules:
        return cls(**{k: int(v or 0) for k, v in (retention or {}).items() if k in RULE_NAMES})


@dataclass
class Decision:
    """keep: backup id → reasons (rules first); delete: backup id → reason, newest first."""

    keep: dict[str, list[str]] = field(default_factory=dict)
    delete: dict[str, str] = field(default_factory=dict)


def period_key(rule: str, created_at: dt.datetime, tz) -> tuple:
    """The period of ``rule`` a backup falls in, on the wall clock of ``tz``."""
    local = created_at.replace(tzinfo=UTC).astimezone(tz)
    if rule == "keep_hourly":
        return local.year, local.month, local.day, local.hour
    if rule == "keep_daily":
        return local.year, local.month, local.day
    if rule == "keep_weekly":
        year, week, _ = local.isocalendar()
        return year, week
    if rule == "keep_monthly":
        return local.year, local.month
    return (local.year,)


def newest_first(items: Iterable[Item]) -> list[Item]:
    """Newest first; equal times by id, so every decision is deterministic."""
    return sorted(items, key=lambda b: (b.created_at, b.id), reverse=True)


def _rule_keeps(candidates: list[Item], rules: Rules, now: dt.datetime, tz
                ) -> dict[str, list[str]]:
    """What the keep_* rules keep among one volume's candidates (newest first)."""
    kept: dict[str, list[str]] = {}

    def add(item: Item, rule: str) -> None:
        kept.setdefault(item.id, []).append(rule)

    for item in candidates[:rules.keep_last]:
        add(item, "keep_last")
    for rule in PERIOD_RULES:
        wanted = getattr(rules, rule)
        last, count = None, 0
        for item in candidates:
            if count >= wanted:
                break
            key = period_key(rule, item.created_at, tz)
            if key != last:
                add(item, rule)
                count += 1
                last = key
    if rules.keep_within_seconds:
        since = now - dt.timedelta(seconds=rules.keep_within_seconds)
        for item in candidates:
            if item.created_at > since:
                add(item, "keep_within_seconds")
    return kept


def decide(items: Iterable[Item], rules: Rules, *, now: dt.datetime, timezone: str = "UTC",
           any_delete: bool = False,
           rule_keeps: Callable | None = None) -> Decision:
    """Keep or delete every owned backup of ``items`` (see the module docstring).

    ``rule_keeps`` replaces the keep_* evaluation (the tests' reference model).
    """
    tz = zone(timezone)
    rule_keeps = rule_keeps or _rule_keeps
    by_id = {b.id: b for b in items}
    volumes: dict[str, list[Item]] = {}
    for item in by_id.values():
        volumes.setdefault(item.volume_id, []).append(item)
    reasons: dict[str, list[str]] = {}
    for members in volumes.values():
        members = newest_first(members)
        candidates = [b for b in members if b.owned and b.status == AVAILABLE]
        for backup_id, why in rule_keeps(candidates, rules, now, tz).items():
            reasons.setdefault(backup_id, []).extend(why)
        newest = next((b for b in members if b.status == AVAILABLE and b.owned), None)
        if newest is not None:
            reasons.setdefault(newest.id, []).append(NEWEST)
        for b in members:
            if not b.owned:
                continue
            if b.status in (AVAILABLE, ERROR):
                if b.busy:
                    reasons.setdefault(b.id, []).append(IN_USE)
            else:  # creating, deleting... or being restored
                reasons.setdefault(b.id, []).append(
                    IN_USE if b.status == RESTORING else IN_PROGRESS)
    # Up the parent chain of everything kept, and (chain rule) of everything not deleted.
    children: dict[str, list[str]] = {}
    for b in by_id.values():
        if b.parent_id:
            children.setdefault(b.parent_id, []).append(b.id)

    def protect(start: Item, reason: str) -> None:
        parent = by_id.get(start.parent_id) if start.parent_id else None
        seen = set()
        while parent is not None and parent.id not in seen:
            seen.add(parent.id)
            if parent.owned and reason not in reasons.get(parent.id, ()):
                reasons.setdefault(parent.id, []).append(reason)
            parent = by_id.get(parent.parent_id) if parent.parent_id else None

    for backup_id in list(reasons):
        if any(r != PARENT_OF_KEPT for r in reasons[backup_id]):
            protect(by_id[backup_id], PARENT_OF_KEPT)
    if not any_delete:
        for b in by_id.values():
            if not b.owned:
                protect(b, HAS_DEPENDENTS)
    decision = Decision()
    for b in newest_first(by_id.values()):
        if not b.owned:
            continue
        if b.id in reasons:
            decision.keep[b.id] = _ordered(reasons[b.id])
        else:
            decision.delete[b.id] = IN_ERROR if b.status == ERROR else NO_RULE
    return decision


_ORDER = {name: i for i, name in enumerate((*RULE_NAMES, NEWEST, IN_USE, IN_PROGRESS,
                                            PARENT_OF_KEPT, HAS_DEPENDENTS))}


def _ordered(reasons: list[str]) -> list[str]:
    return sorted(set(reasons), key=lambda r: _ORDER.get(r, len(_ORDER)))
