"""The backup-policy resource, its runs, its prunes, and the scheduler's tick.

Runs create backups through ``api.create_backup`` (quota, host choice and
status checks exactly as an API create), attributed to the policy; prunes
delete through ``api.delete_backup``, the path of ``DELETE /backups/{id}``.

The tick (beat, on the maintenance queue, every ``policy_tick_interval``
seconds) reads the due policies through the index on ``next_run_at`` (one
statement when nothing is due) and runs each in its own transaction: the
claim of the due time (a conditional UPDATE moving ``next_run_at`` on, only
if it still holds the due time read), the run's row (unique per policy and
due time) and every backup it creates commit together or not at all. A
tick killed mid-run leaves the due time unclaimed and the next tick runs
it; two ticks racing for it cannot both commit. Jobs are published after
the commit; one whose publication was lost is re-sent by the reaper.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import bindparam
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session

from orchestrator import api
from orchestrator import errors
from orchestrator import paging
from orchestrator.config import Settings
from orchestrator.context import RequestContext
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.dispatch import dispatch
from orchestrator.models import Backup
from orchestrator.models import BackupPolicy
from orchestrator.models import BackupPolicyRun
from orchestrator.models import Job
from orchestrator.models import Volume
from orchestrator.models import new_id
from orchestrator.policies import retention
from orchestrator.policies import schedule
from orchestrator.states import ACTIVE_JOB_STATES
from orchestrator.states import BackupStatus
from orchestrator.states import VerifyStatus

log = logging.getLogger(__name__)

SORT_KEYS = {"id", "created_at", "updated_at", "display_name", "next_run_at", "last_run_at",
             "project_id", "enabled"}
KEEP_MAX = 10_000
KEEP_WITHIN_MAX = 100 * 366 * 86400
INTERVAL_MIN, INTERVAL_MAX = 1, 366 * 86400
WINDOW_MIN, WINDOW_MAX = 1, 31 * 86400
DEFAULT_WINDOW = 3600
VOLUME_IDS_MAX = 1000
RECENT_RUNS = 10
PRUNE_RECORD_MAX = 100   # delete entries kept in last_prune
TICK_BATCH = 1000        # due policies read per statement


class BackupPolicyNotFound(errors.NotFound):
    def __init__(self, policy_id: str):
        super().__init__(f"Backup policy {policy_id} could not be found.")


def any_backup_deletable(session: Session, backup_ids: list[str]) -> bool:
    """Whether prune may delete any of these backups, whatever depends on it: when every
    one is of the shared-block format (a logical full; ``api.delete_backup`` then takes
    ``any_backup``). A chain-format backup among them keeps the chain rule for all:
    a backup with a dependent this prune does not delete is kept (``has_dependents``)."""
    for start in range(0, len(backup_ids), 500):
        chunk = backup_ids[start:start + 500]
        shared = session.scalar(select(func.count()).where(
            Backup.id.in_(chunk), Backup.data_format == 2))
        if shared != len(chunk):
            return False
    return True


# ----------------------------------------------------------------------------- validation


def _bad(message: str) -> errors.InvalidInput:
    return errors.InvalidInput(f"Invalid input received: {message}")


def _int_in(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"{name} must be a whole number from {low} to {high}, not {value!r}.")
    return value


def _schedule_values(spec) -> dict:
    if not isinstance(spec, dict):
        raise _bad("schedule must be an object.")
    unknown = set(spec) - {"cron", "timezone", "interval_seconds"}
    if unknown:
        raise _bad(f"schedule: unknown keys {', '.join(sorted(unknown))}.")
    cron, interval = spec.get("cron"), spec.get("interval_seconds")
    if (cron is None) == (interval is None):
        raise _bad("schedule needs exactly one of cron and interval_seconds.")
    timezone = spec.get("timezone") or "UTC"
    if not isinstance(timezone, str):
        raise _bad("schedule.timezone must be a time zone name such as Europe/Berlin.")
    schedule.zone(timezone)
    if cron is not None:
        if not isinstance(cron, str) or len(cron) > 255:
            raise _bad("schedule.cron must be a cron expression.")
        return {"cron": schedule.check_cron(cron), "interval_seconds": None,
                "timezone": timezone}
    return {"cron": None, "timezone": timezone,
            "interval_seconds": _int_in("schedule.interval_seconds", interval, INTERVAL_MIN,
                                        INTERVAL_MAX)}


def _retention_values(spec) -> dict:
    if not isinstance(spec, dict):
        raise _bad("retention must be an object.")
    unknown = set(spec) - set(retention.RULE_NAMES)
    if unknown:
        raise _bad(f"retention: unknown keys {', '.join(sorted(unknown))}.")
    out = {}
    for name, value in spec.items():
        if value is None:
            continue
        high = KEEP_WITHIN_MAX if name == "keep_within_seconds" else KEEP_MAX
        out[name] = _int_in(f"retention.{name}", value, 0, high)
    return out


def _volume_ids(session: Session, project_id: str, ids) -> list[str]:
    if not isinstance(ids, list) or len(ids) > VOLUME_IDS_MAX:
        raise _bad(f"volume_ids must be a list of at most {VOLUME_IDS_MAX} volume ids.")
    unique = list(dict.fromkeys(ids))
    if not unique:
        return []
    found = set(session.scalars(select(Volume.id).where(
        Volume.id.in_(unique), Volume.project_id == project_id, Volume.deleted.is_(False))))
    missing = [v for v in unique if v not in found]
    if missing:
        raise _bad(f"volume_ids: {', '.join(missing)} is not a volume of project "
                   f"{project_id}.")
    return unique


def check_values(session: Session, project_id: str, body: dict, *, partial: bool,
                 current: BackupPolicy | None = None) -> dict:
    """Column values of a create (or the changed ones of an update) from a loaded body.

    The body's shape is the HTTP schema's job; here the meaning: schedule,
    time zone, volumes of the policy's project, bounds. :raises InvalidInput:
    """
    values: dict = {}
    if "schedule" in body:
        values.update(_schedule_values(body["schedule"]))
    elif not partial:
        raise _bad("schedule is required.")
    if "retention" in body:
        values["retention"] = _retention_values(body["retention"] or {})
    elif not partial:
        values["retention"] = {}
    if "volume_ids" in body:
        values["volume_ids"] = _volume_ids(session, project_id, body["volume_ids"] or [])
    if "volume_metadata" in body:
        values["volume_metadata"] = dict(body["volume_metadata"] or {})
    for key, column in (("name", "display_name"), ("description", "display_description")):
        if key in body:
            values[column] = body[key]
    if body.get("start_window_seconds") is not None:
        values["start_window_seconds"] = _int_in("start_window_seconds",
                                                 body["start_window_seconds"], WINDOW_MIN,
                                                 WINDOW_MAX)
    for key in ("full_every", "full_every_days"):
        if key in body:
            values[key] = None if body[key] is None else _int_in(key, body[key], 1, KEEP_MAX)
    for key in ("run_missed", "enabled"):
        if body.get(key) is not None:
            values[key] = bool(body[key])
    volume_ids = values.get("volume_ids", current.volume_ids if current else [])
    selector = values.get("volume_metadata", current.volume_metadata if current else {})
    if not volume_ids and not selector:
        raise _bad("a policy needs volume_ids or volume_metadata to select its volumes.")
    return values


# ----------------------------------------------------------------------------- resource


def policy_context(policy: BackupPolicy) -> RequestContext:
    """Who a policy's runs and prunes act as: its creator, a member of its project."""
    return RequestContext(user_id=policy.user_id, project_id=policy.project_id,
                          roles=("member",), request_id=f"req-policy-{policy.id}")


def _first_due(policy: BackupPolicy, now: dt.datetime) -> dt.datetime | None:
    if not policy.enabled or policy.deleted:
        return None
    return schedule.next_after(after=now, cron=policy.cron,
                               interval_seconds=policy.interval_seconds,
                               timezone=policy.timezone, anchor=now + dt.timedelta(
                                   seconds=policy.interval_seconds or 0))


def create_policy(session: Session, ctx: RequestContext, body: dict, *,
                  now: dt.datetime) -> BackupPolicy:
    """A new policy of the caller's project. :raises InvalidInput:"""
    values = check_values(session, ctx.project_id, body, partial=False)
    policy = BackupPolicy(id=new_id(), project_id=ctx.project_id, user_id=ctx.user_id,
                          volume_ids=[], volume_metadata={}, missed_runs=0, enabled=True,
                          run_missed=True, start_window_seconds=DEFAULT_WINDOW,
                          created_at=now, deleted=False)
    for key, value in values.items():
        setattr(policy, key, value)
    policy.next_run_at = _first_due(policy, now)
    session.add(policy)
    session.flush()
    return policy


def get_policy(session: Session, ctx: RequestContext, policy_id: str) -> BackupPolicy:
    """A visible policy (admins see every project's). :raises BackupPolicyNotFound:"""
    policy = session.get(BackupPolicy, policy_id)
    if policy is None or policy.deleted or \
            (not ctx.is_admin and policy.project_id != ctx.project_id):
        raise BackupPolicyNotFound(policy_id)
    return policy


def list_policies(session: Session, ctx: RequestContext, *, all_tenants: bool = False,
                  **page) -> tuple[list[BackupPolicy], int | None]:
    """A page of visible policies. :raises MarkerNotFound, InvalidInput:"""
    scope = None if (ctx.is_admin and all_tenants) else ctx.project_id
    return paging.list_rows(session, BackupPolicy, scope_project=scope, sort_keys=SORT_KEYS,
                            **page)


def update_policy(session: Session, ctx: RequestContext, policy_id: str, body: dict, *,
                  now: dt.datetime) -> BackupPolicy:
    """Change the given fields; a new schedule (or enabling) recomputes the next run."""
    policy = get_policy(session, ctx, policy_id)
    values = check_values(session, policy.project_id, body, partial=True, current=policy)
    reschedule = any(k in values for k in ("cron", "interval_seconds", "timezone")) or \
        values.get("enabled", policy.enabled) != policy.enabled
    for key, value in values.items():
        setattr(policy, key, value)
    if reschedule:
        policy.next_run_at = _first_due(policy, now)
        policy.last_error = None
    policy.updated_at = now
    session.flush()
    return policy


def delete_policy(session: Session, ctx: RequestContext, policy_id: str, *,
                  now: dt.datetime) -> None:
    """Soft-delete: it never runs again; its backups stay (with their policy_id)."""
    policy = get_policy(session, ctx, policy_id)
    policy.deleted, policy.deleted_at, policy.next_run_at = True, now, None
    session.flush()


def last_success(session: Session, policy_ids: list[str]) -> dict[str, dict[str, str]]:
    """policy id → {volume id: created_at of its newest available backup}."""
    if not policy_ids:
        return {}
    rows = session.execute(
        select(Backup.policy_id, Backup.volume_id, func.max(Backup.created_at))
        .where(Backup.policy_id.in_(policy_ids), Backup.deleted.is_(False),
               Backup.status == BackupStatus.AVAILABLE)
        .group_by(Backup.policy_id, Backup.volume_id)).all()
    out: dict[str, dict[str, str]] = {}
    for policy_id, volume_id, at in rows:
        out.setdefault(policy_id, {})[volume_id] = at
    return out


def recent_runs(session: Session, policy_id: str, limit: int = RECENT_RUNS
                ) -> list[BackupPolicyRun]:
    return list(session.scalars(select(BackupPolicyRun).where(
        BackupPolicyRun.policy_id == policy_id).order_by(BackupPolicyRun.due_at.desc())
        .limit(limit)))


# ----------------------------------------------------------------------------- runs


def select_volumes(session: Session, policy: BackupPolicy) -> tuple[list[str], list[str]]:
    """(volume ids to back up, named volume ids that no longer exist), in a stable order."""
    wanted = list(policy.volume_ids or [])
    found = set(session.scalars(select(Volume.id).where(
        Volume.id.in_(wanted), Volume.project_id == policy.project_id,
        Volume.deleted.is_(False)))) if wanted else set()
    chosen = [v for v in wanted if v in found]
    missing = [v for v in wanted if v not in found]
    selector = policy.volume_metadata or {}
    if selector:
        rows = session.execute(select(Volume.id, Volume.metadata_).where(
            Volume.project_id == policy.project_id, Volume.deleted.is_(False))
            .order_by(Volume.created_at, Volume.id)).all()
        for vid, metadata in rows:
            md = metadata or {}
            if vid not in found and all(str(md.get(k)) == str(v) if k in md else False
                                        for k, v in selector.items()):
                chosen.append(vid)
    return chosen, missing


def _wants_full(policy: BackupPolicy, history: list, now: dt.datetime) -> bool:
    """Full or incremental: always full unless full_every / full_every_days say otherwise."""
    if not policy.full_every and not policy.full_every_days:
        return True
    chain, last_full = 0, None
    for row in history:  # the policy's available backups of the volume, newest first
        if row.parent_id is None:
            last_full = row
            break
        chain += 1
    if last_full is None:
        return True
    if policy.full_every and chain + 1 >= policy.full_every:
        return True
    return bool(policy.full_every_days and
                now - last_full.created_at >= dt.timedelta(days=policy.full_every_days))


def _histories(session: Session, policy: BackupPolicy) -> dict[str, list]:
    if not policy.full_every and not policy.full_every_days:
        return {}
    rows = session.execute(select(Backup.volume_id, Backup.parent_id, Backup.created_at).where(
        Backup.policy_id == policy.id, Backup.deleted.is_(False),
        Backup.status == BackupStatus.AVAILABLE)
        .order_by(Backup.created_at.desc(), Backup.id.desc())).all()
    out: dict[str, list] = {}
    for row in rows:
        out.setdefault(row.volume_id, []).append(row)
    return out


def _no_parent(exc: errors.OrchestratorError) -> bool:
    return isinstance(exc, errors.InvalidBackup) and "No backups available" in exc.message


def run_policy(session: Session, settings: Settings, policy: BackupPolicy, *,
               now: dt.datetime, due_at: dt.datetime, kind: str, coalesced: int = 0,
               reason: str | None = None) -> tuple[BackupPolicyRun, list[Job]]:
    """Back up every selected volume once, each through ``api.create_backup``.

    Each volume's create is a savepoint: one refused (busy, over quota...) is
    recorded in the run's errors and the others go on. Returns the run row
    and the jobs to dispatch after the caller commits.

    :raises IntegrityError: a run of this policy at ``due_at`` exists already.
    """
    run = BackupPolicyRun(policy_id=policy.id, due_at=due_at, started_at=now, kind=kind,
                          coalesced=coalesced, reason=reason, backup_ids={}, errors={})
    session.add(run)
    session.flush()  # the unique (policy, due time) row first: a duplicate fails here
    ctx = policy_context(policy)
    chosen, missing = select_volumes(session, policy)
    histories = _histories(session, policy)
    created: dict[str, str] = {}
    failed: dict[str, str] = {v: f"Volume {v} could not be found." for v in missing}
    to_dispatch: list[Job] = []
    stamp = due_at.strftime("%Y%m%dT%H%M%SZ")
    name = f"{(policy.display_name or 'policy')[:200]}-{stamp}"
    for vid in chosen:
        incremental = not _wants_full(policy, histories.get(vid, []), now)
        for attempt_incremental in ((True, False) if incremental else (False,)):
            try:
                with session.begin_nested():
                    backup, jobs = api.create_backup(
                        session, ctx, settings, volume_id=vid, now=now, name=name,
                        description=f"backup policy {policy.id}",
                        incremental=attempt_incremental, force=True, policy_id=policy.id)
                created[vid] = backup.id
                to_dispatch.extend(jobs)
                failed.pop(vid, None)
                break
            except errors.OrchestratorError as exc:
                failed[vid] = exc.message
                if not (attempt_incremental and _no_parent(exc)):
                    break
    run.backup_ids, run.errors = created, failed
    policy.last_run_at = now
    if created:
        policy.last_error = None
    session.flush()
    return run, to_dispatch


def _no_host_only(failed: dict[str, str], created: dict) -> bool:
    return bool(failed) and not created and all("could not be found: no enabled" in m
                                                for m in failed.values())


# ----------------------------------------------------------------------------- prune


def _items(session: Session, policy: BackupPolicy) -> list[retention.Item]:
    """Every live backup of the volumes the policy has backups of, as retention sees it."""
    volume_ids = select(Backup.volume_id).where(
        Backup.policy_id == policy.id, Backup.deleted.is_(False)).distinct()
    rows = session.execute(select(
        Backup.id, Backup.volume_id, Backup.created_at, Backup.status, Backup.parent_id,
        Backup.policy_id, Backup.verify_status).where(
        Backup.volume_id.in_(volume_ids), Backup.deleted.is_(False),
        Backup.project_id == policy.project_id,
        Backup.status != BackupStatus.DELETING)).all()
    ids = [r.id for r in rows]
    busy = set()
    for start in range(0, len(ids), 500):
        busy |= set(session.scalars(select(Job.resource_id).where(
            Job.resource_id.in_(ids[start:start + 500]), Job.state.in_(ACTIVE_JOB_STATES))))
    return [retention.Item(
        id=r.id, volume_id=r.volume_id, created_at=r.created_at, status=r.status or "",
        parent_id=r.parent_id, owned=r.policy_id == policy.id,
        busy=r.id in busy or r.status == BackupStatus.RESTORING or
        r.verify_status == VerifyStatus.VERIFYING) for r in rows]


def has_rules(policy: BackupPolicy) -> bool:
    """A policy without any keep_* rule keeps everything: it never prunes."""
    return any(int(v or 0) > 0 for v in (policy.retention or {}).values())


def prune_policy(session: Session, settings: Settings, policy: BackupPolicy, *,
                 now: dt.datetime, dry_run: bool) -> tuple[dict, list[Job]]:
    """Decide (and unless ``dry_run`` carry out) the policy's retention.

    Returns ``({"delete": [...], "keep": [...], "errors": [...]}, jobs)``.
    Deletes go newest first through ``api.delete_backup``; in the chain rule's
    mode a parent whose dependents this prune queues for deletion is marked
    ``deferred``: it goes at the next prune, once they are gone.
    """
    items = _items(session, policy)
    by_id = {i.id: i for i in items}
    any_delete = any_backup_deletable(session, [i.id for i in items])
    if has_rules(policy):
        decision = retention.decide(items, retention.Rules.of(policy.retention), now=now,
                                    timezone=policy.timezone, any_delete=any_delete)
    else:
        decision = retention.Decision(
            keep={i.id: ["no_retention_rules"] for i in retention.newest_first(items)
                  if i.owned})
    delete = [{"backup_id": b, "volume_id": by_id[b].volume_id, "reason": why}
              for b, why in decision.delete.items()]
    keep = [{"backup_id": b, "volume_id": by_id[b].volume_id, "rules": rules}
            for b, rules in decision.keep.items()]
    problems: list[dict] = []
    to_dispatch: list[Job] = []
    if not dry_run:
        ctx = policy_context(policy)
        queued: set[str] = set()
        going: set[str] = set()
        for entry in delete:  # newest first: dependents before what they depend on
            try:
                with session.begin_nested():
                    to_dispatch.extend(api.delete_backup(session, ctx, settings,
                                                         entry["backup_id"], now=now,
                                                         any_backup=any_delete))
                queued.add(entry["backup_id"])
                going.add(entry["backup_id"])
            except errors.OrchestratorError as exc:
                children = session.execute(select(Backup.id, Backup.status).where(
                    Backup.parent_id == entry["backup_id"], Backup.deleted.is_(False))).all()
                if children and all(c.id in going or c.status == BackupStatus.DELETING
                                    for c in children):
                    entry["deferred"] = True
                    going.add(entry["backup_id"])
                else:
                    problems.append({"backup_id": entry["backup_id"], "message": exc.message})
        _record_kept(session, decision.keep, items)
        policy.last_prune = {
            "at": now.isoformat(timespec="microseconds"), "deleted": len(queued),
            "deferred": sum(1 for e in delete if e.get("deferred")), "kept": len(keep),
            "errors": problems[:PRUNE_RECORD_MAX], "delete": delete[:PRUNE_RECORD_MAX]}
        session.flush()
    return {"delete": delete, "keep": keep, "errors": problems}, to_dispatch


_SET_KEPT = update(Backup.__table__).where(Backup.__table__.c.id == bindparam("b_id")) \
    .values(kept_by=bindparam("b_kept"))


def _record_kept(session: Session, keep: dict[str, list[str]], items) -> None:
    current = dict(session.execute(select(Backup.id, Backup.kept_by).where(
        Backup.id.in_(list(keep)))).all()) if keep else {}
    changed = [{"b_id": b, "b_kept": rules} for b, rules in keep.items()
               if current.get(b) != rules]
    if changed:
        session.execute(_SET_KEPT, changed)


# ----------------------------------------------------------------------------- the tick


_DUE = (select(BackupPolicy.id, BackupPolicy.next_run_at)
        .where(BackupPolicy.next_run_at.is_not(None),
               BackupPolicy.next_run_at <= bindparam("now"))
        .order_by(BackupPolicy.next_run_at).limit(bindparam("batch")))


_STILL_DUE = select(BackupPolicy.id).where(BackupPolicy.id == bindparam("id"),
                                           BackupPolicy.next_run_at == bindparam("due"))


def due_policies(conn, now: dt.datetime, batch: int = TICK_BATCH) -> list:
    """(id, due time) of the policies due at ``now``: one index range read."""
    return conn.execute(_DUE, {"now": now, "batch": batch}).all()


def claim_and_run(db, settings: Settings, policy_id: str, due_at: dt.datetime
                  ) -> tuple[dict | None, list[Job]]:
    """Claim one due time of one policy and run it, all in one transaction.

    Returns (what happened, jobs to dispatch); (None, []) when another tick
    has the due time (or the policy changed meanwhile).
    """
    with db.engine.connect() as conn:  # already claimed: skip without the write lock
        if conn.execute(_STILL_DUE, {"id": policy_id, "due": due_at}).first() is None:
            return None, []
    with db.scope() as session:
        policy = session.scalar(
            select(BackupPolicy).where(BackupPolicy.id == policy_id,
                                       BackupPolicy.next_run_at == due_at,
                                       BackupPolicy.enabled.is_(True),
                                       BackupPolicy.deleted.is_(False))
            .with_for_update(skip_locked=True))
        if policy is None:
            return None, []
        now = utcnow()
        timing = dict(cron=policy.cron, interval_seconds=policy.interval_seconds,
                      timezone=policy.timezone, anchor=due_at)
        next_at = schedule.next_after(after=now, **timing)
        claimed = session.execute(
            update(BackupPolicy).where(BackupPolicy.id == policy.id,
                                       BackupPolicy.next_run_at == due_at)
            .values(next_run_at=next_at)).rowcount == 1
        if not claimed:
            return None, []
        session.expire(policy, ["next_run_at"])
        if settings.policy_tick_pause:
            log.warning("policy %s: due time %s claimed; pausing %.1f s before running it "
                        "(ORCH_POLICY_TICK_PAUSE)", policy.id, due_at.isoformat(),
                        settings.policy_tick_pause)
            time.sleep(settings.policy_tick_pause)
        late = (now - due_at).total_seconds()
        coalesced = schedule.count_between(start=due_at, end=now, **timing)
        window = policy.start_window_seconds
        outcome = {"policy_id": policy.id, "due_at": due_at, "coalesced": coalesced}
        if coalesced:
            policy.missed_runs += coalesced
        if late > window:
            policy.missed_runs += 1
            why = (f"not started within its start window of {window} s: the first chance "
                   f"came {late:.0f} s after the due time")
            if policy.last_error:
                why += f" ({policy.last_error})"
            if coalesced:
                why += f"; {coalesced} later due time(s) had passed too"
            if not policy.run_missed:
                session.add(BackupPolicyRun(policy_id=policy.id, due_at=due_at,
                                            started_at=now, kind="missed",
                                            coalesced=coalesced, reason=why, backup_ids={},
                                            errors={}))
                policy.last_error = None
                log.warning("policy %s: run due at %s missed: %s", policy.id, due_at, why)
                return {**outcome, "kind": "missed"}, []
            run, jobs = run_policy(session, settings, policy, now=now, due_at=due_at,
                                   kind="late", coalesced=coalesced, reason=why)
            return {**outcome, "kind": "late", "backups": len(run.backup_ids)}, jobs
        reason = f"{coalesced} later due time(s) had passed too; run once for all" \
            if coalesced else None
        run, jobs = run_policy(session, settings, policy, now=now, due_at=due_at,
                               kind="scheduled", coalesced=coalesced, reason=reason)
        if _no_host_only(run.errors, run.backup_ids):
            # Nothing could start: leave the due time to the next tick, until its window
            # closes, and say why on the policy meanwhile.
            run_errors = dict(run.errors)
            session.rollback()
            message = next(iter(run_errors.values()))
            session.execute(update(BackupPolicy).where(BackupPolicy.id == policy_id)
                            .values(last_error=message))
            log.info("policy %s: run due at %s waits: %s", policy_id, due_at, message)
            return {**outcome, "kind": "waiting", "errors": len(run_errors)}, []
        return {**outcome, "kind": "scheduled", "backups": len(run.backup_ids),
                "errors": len(run.errors)}, jobs


def prune_after_run(db, settings: Settings, publisher, policy_id: str) -> None:
    """The retention step that follows every run (its own transaction)."""
    with db.scope() as session:
        policy = session.get(BackupPolicy, policy_id)
        if policy is None or policy.deleted or not has_rules(policy):
            return
        _, jobs = prune_policy(session, settings, policy, now=utcnow(), dry_run=False)
    if jobs:
        dispatch(db, publisher, jobs, undo_on_failure=False)


def _run_one(db, settings: Settings, send, policy_id: str, due_at: dt.datetime) -> str:
    """Claim and run one due policy, hand its jobs to ``send``; returns what happened."""
    try:
        outcome, jobs = claim_and_run(db, settings, policy_id, due_at)
    except Exception:
        log.exception("policy %s: the run due at %s failed; the next tick retries it",
                      policy_id, due_at)
        return "skipped"
    if outcome is None:
        return "skipped"
    if jobs:
        send(jobs)
    return outcome["kind"]


def _prune_one(db, settings: Settings, publisher, policy_id: str) -> None:
    try:
        prune_after_run(db, settings, publisher, policy_id)
    except Exception:
        log.exception("policy %s: prune after the run failed", policy_id)


def tick(settings: Settings, *, publisher, now: dt.datetime | None = None) -> dict:
    """Run every policy due now, each exactly once per due time (see the module docstring).

    On PostgreSQL due policies run on ``policy_tick_threads`` threads (their
    claims make that as safe as several ticks at once) and a dispatcher thread
    publishes each committed run's jobs while the next runs are made: the
    database's and the broker's round trips overlap. SQLite has one writer and
    the work is CPU-bound, so there everything runs in turn. The prunes follow
    once every due run has been dispatched, so retention never delays a run.
    """
    db = get_database(settings.database_url)
    counts = {"due": 0, "scheduled": 0, "late": 0, "missed": 0, "waiting": 0, "skipped": 0}
    with db.engine.connect() as conn:
        due = due_policies(conn, now or utcnow())
    counts["due"] = len(due)
    if not due:
        return counts
    threads = 1 if db.is_sqlite else max(1, min(settings.policy_tick_threads, len(due)))
    with ThreadPoolExecutor(1, thread_name_prefix="policy-dispatch") as dispatcher:

        def send(jobs):
            if threads == 1:
                dispatch(db, publisher, jobs, undo_on_failure=False)
            else:
                dispatcher.submit(dispatch, db, publisher, jobs, undo_on_failure=False)

        def one(row):
            return row[0], _run_one(db, settings, send, row[0], row[1])

        if threads == 1:
            results = [one(row) for row in due]
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="policy-tick") as pool:
                results = list(pool.map(one, due))
    ran = []
    for policy_id, kind in results:
        counts[kind] += 1
        if kind in ("scheduled", "late"):
            ran.append(policy_id)
    for policy_id in ran:
        _prune_one(db, settings, publisher, policy_id)
    log.info("policy tick: %s", counts)
    return counts
