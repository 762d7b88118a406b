"""Job rows: creation, atomic claim, leases, terminal states and chains.

A job row is the source of truth of an asynchronous operation; the broker
only carries its id (the Celery task id is the job id). A worker *claims* a
job with a compare-and-swap from ``queued`` to ``running`` and then renews a
lease while it works. Whatever happens to the worker, the job ends: the
worker finishes it, or the maintenance reaper finds the expired lease and
applies the same failure handling the worker would have.

Chains: ``next_job_id`` names a job in state ``waiting`` that is queued when
this job succeeds and failed (with its own clean-up) when this job fails.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Iterable

from sqlalchemy import bindparam
from sqlalchemy import delete
from sqlalchemy import insert as insert_
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from orchestrator import quota
from orchestrator.db import dialect_of
from orchestrator.models import Backup
from orchestrator.models import BackupMetadata
from orchestrator.models import Job
from orchestrator.models import Snapshot
from orchestrator.models import Volume
from orchestrator.models import new_id

log = logging.getLogger(__name__)

ACTIVE_STATES = ("waiting", "queued", "running")
# Idempotent operations: after a lost lease they run again (up to max_attempts).
RESUMABLE = frozenset({"backup_delete", "backup_import", "volume_create", "volume_delete",
                       "snapshot_delete"})
# Operations any live backup host of the zone can run (the store and, for the file volume
# backend, the volume path are shared within a zone); volume operations stay on their host.
ROUTABLE = frozenset({"backup_create", "backup_restore", "backup_delete", "backup_import",
                      "backup_verify"})
RESUMABLE_ATTEMPTS = 3
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
FAIL_REASON_MAX = 255
_INSERT_JOB = insert_(Job.__table__)


def queue_for(kind: str, host: str) -> str:
    """The per-host queue name: ``backup.<host>`` or ``volume.<host>``."""
    return f"{kind}.{host}"


def _job_values(op: str, *, resource_type: str, resource_id: str, host: str, kind: str,
                project_id: str | None, params: dict | None, state: str,
                now: dt.datetime) -> dict:
    return dict(id=new_id(), op=op, resource_type=resource_type, resource_id=resource_id,
                host=host, queue=queue_for(kind, host), project_id=project_id,
                params=params or {}, state=state, created_at=now, attempt=0,
                max_attempts=RESUMABLE_ATTEMPTS if op in RESUMABLE else 1,
                cancel_requested=False, dispatch_count=0,
                dispatched_at=now if state == "queued" else None)


def create(session: Session, op: str, *, resource_type: str, resource_id: str, host: str,
           kind: str, project_id: str | None, params: dict | None = None,
           state: str = "queued", now: dt.datetime) -> Job:
    """Insert a job (flushes so its id is usable at once)."""
    job = Job(**_job_values(op, resource_type=resource_type, resource_id=resource_id, host=host,
                            kind=kind, project_id=project_id, params=params, state=state,
                            now=now))
    session.add(job)
    session.flush()
    return job


def insert(session: Session, op: str, *, resource_type: str, resource_id: str, host: str,
           kind: str, project_id: str | None, params: dict | None = None,
           now: dt.datetime) -> Job:
    """Insert a queued job with one plain INSERT (no unit-of-work flush): for hot paths.

    Returns a detached Job carrying the row's values, good for dispatch and
    views. It is not tracked: change the row with UPDATE statements, not by
    setting attributes (use ``create`` for jobs that get chained).
    """
    values = _job_values(op, resource_type=resource_type, resource_id=resource_id, host=host,
                         kind=kind, project_id=project_id, params=params, state="queued",
                         now=now)
    session.execute(_INSERT_JOB, values)
    return Job(**values)


def chain(first: Job, then: Job) -> None:
    """Run ``then`` after ``first`` succeeds (``then`` must be in state waiting)."""
    first.next_job_id = then.id


def _returning(session: Session) -> bool:
    """Whether UPDATE ... RETURNING is available (PostgreSQL; SQLite 3.35 and later)."""
    return dialect_of(session).update_returning


# Built once (every job runs it). Bound parameters rule out the session's in-Python
# synchronization: the claimed row is loaded afresh instead.
_CLAIM = (update(Job)
          .where(Job.id == bindparam("job_id"), Job.state == "queued",
                 Job.cancel_requested.is_(False))
          .values(state="running", attempt=Job.attempt + 1, lease_owner=bindparam("owner"),
                  lease_expires_at=bindparam("expires"), started_at=bindparam("now"),
                  updated_at=bindparam("now"))
          .execution_options(synchronize_session=False))
_CLAIM_RETURNING = _CLAIM.returning(Job).execution_options(populate_existing=True)


def claim(session: Session, job_id: str, owner: str, *, now: dt.datetime,
          ttl: float) -> Job | None:
    """Take a queued job with a lease; None if it is taken, finished or cancelled."""
    params = {"job_id": job_id, "owner": owner, "now": now,
              "expires": now + dt.timedelta(seconds=ttl)}
    if _returning(session):  # the claimed row in the same round trip
        return session.scalars(_CLAIM_RETURNING, params).one_or_none()
    if session.execute(_CLAIM, params).rowcount != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def renew(session: Session, job_id: str, owner: str, *, now: dt.datetime,
          ttl: float) -> tuple[bool, bool]:
    """Extend a lease. Returns (still ours, cancel requested)."""
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.state == "running", Job.lease_owner == owner)
        .values(lease_expires_at=now + dt.timedelta(seconds=ttl)))
    cancel = bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
    return result.rowcount == 1, cancel


@functools.cache
def _finish_statement(owned: bool, returning: bool):
    """UPDATE a job to a terminal state (built once per shape; see _CLAIM on synchronization)."""
    cond = [Job.id == bindparam("b_job_id"), Job.state.in_(("queued", "running"))]
    if owned:
        cond.append(Job.lease_owner == bindparam("b_owner"))
    stmt = update(Job).where(*cond).values(
        state=bindparam("b_state"), error=bindparam("b_error"), finished_at=bindparam("b_now"),
        lease_expires_at=None, updated_at=bindparam("b_now")).execution_options(
        synchronize_session=False)
    return stmt.returning(Job.next_job_id) if returning else stmt


def finish(session: Session, job: Job, state: str, *, now: dt.datetime,
           error: str | None = None, owner: str | None = None) -> bool:
    """Move a running (or queued) job to a terminal state; False if someone else did.

    On success ``job`` carries the new state, and ``job.next_job_id`` is refreshed
    from the row as this update saw it: a force delete may have chained a job after
    ``job`` was read, and whoever ends the job must queue (or fail) that one too.
    """
    params = {"b_job_id": job.id, "b_owner": owner, "b_state": state, "b_error": error,
              "b_now": now}
    returning = _returning(session)
    result = session.execute(_finish_statement(owner is not None, returning), params)
    if returning:
        row = result.first()
        if row is None:
            return False
        next_job_id = row[0]
    else:
        if result.rowcount != 1:
            return False
        next_job_id = session.scalar(select(Job.next_job_id).where(Job.id == job.id))
    # As the row now is, without marking ``job`` dirty (it may be attached or detached).
    for key, value in (("state", state), ("error", error), ("finished_at", now),
                       ("lease_expires_at", None), ("updated_at", now),
                       ("next_job_id", next_job_id)):
        set_committed_value(job, key, value)
    return True


def promote_next(session: Session, job: Job, *, now: dt.datetime) -> Job | None:
    """Queue the job chained after ``job``; returns it for dispatch after commit."""
    if not job.next_job_id:
        return None
    result = session.execute(update(Job).where(Job.id == job.next_job_id, Job.state == "waiting")
                             .values(state="queued", dispatched_at=now, updated_at=now))
    return session.get(Job, job.next_job_id) if result.rowcount == 1 else None


def truncate_reason(reason: str) -> str:
    reason = " ".join(str(reason).split())
    return reason if len(reason) <= FAIL_REASON_MAX else reason[:FAIL_REASON_MAX - 3] + "..."


# ---------------------------------------------------------------------------------------
# Resource effects of each operation ending. Used by workers (on success/failure), by the
# reaper (expired lease), and by the API (a job that could not be queued).


@functools.cache
def _status_statement(model, with_reason: bool = False, previous: bool = False):
    """UPDATE a resource from one status to another, only if it is still in the first.

    Built once per shape (every job's failure path and every backup create run
    one), on the table: no ORM update machinery per call, so ``set_status``
    expires a loaded copy of the row itself.
    """
    table = model.__table__
    values = {"status": bindparam("b_status"), "updated_at": bindparam("b_now")}
    if with_reason:
        values["fail_reason"] = bindparam("b_reason")
    if previous:
        values["previous_status"] = bindparam("b_previous")
    return update(table).where(table.c.id == bindparam("b_id"),
                               table.c.status == bindparam("b_from")).values(**values)


def set_status(session: Session, model, ident: str, from_status: str, to_status: str, *,
               now: dt.datetime, reason: str | None = None, previous: str | None = None) -> int:
    """Compare-and-swap a resource's status; returns the rows changed (0 or 1)."""
    params = {"b_id": ident, "b_from": from_status, "b_status": to_status, "b_now": now,
              "b_reason": reason, "b_previous": previous}
    changed = session.execute(_status_statement(model, reason is not None, previous is not None),
                              params).rowcount
    loaded = session.identity_map.get(identity_key(model, ident)) if changed else None
    if loaded is not None:
        session.expire(loaded)
    return changed


def _restore_source(session: Session, job: Job, now: dt.datetime) -> None:
    """Put the backed-up volume or snapshot back exactly as it was."""
    p = job.params
    if p.get("snapshot_id"):
        set_status(session, Snapshot, p["snapshot_id"], "backing-up",
                   p.get("snapshot_previous_status", "available"), now=now)
    else:
        set_status(session, Volume, p["volume_id"], "backing-up",
                   p.get("previous_status", "available"), now=now, previous="backing-up")


def _purge_volume(session: Session, volume_id: str, now: dt.datetime) -> None:
    """Soft-delete a volume row and give its quota back, once."""
    vol = session.get(Volume, volume_id)
    if vol is None or vol.deleted:
        return
    result = session.execute(update(Volume).where(Volume.id == volume_id,
                                                  Volume.deleted.is_(False))
                             .values(deleted=True, deleted_at=now, status="deleted"))
    if result.rowcount:
        quota.release(session, vol.project_id, {"volumes": 1, "gigabytes": vol.size}, now=now)


# op → (model, transient status, status after a failure) of the job's own resource.
_FAILED_STATUS = {
    "backup_create": (Backup, "creating", "error"),
    "backup_import": (Backup, "creating", "error"),
    "backup_delete": (Backup, "deleting", "error_deleting"),
    "volume_create": (Volume, "creating", "error"),
    "volume_delete": (Volume, "deleting", "error_deleting"),
    "snapshot_create": (Snapshot, "creating", "error"),
    "snapshot_delete": (Snapshot, "deleting", "error_deleting"),
}


def on_failure(session: Session, job: Job, reason: str, *, now: dt.datetime,
               cancelled: bool = False) -> list[Job]:
    """Apply the terminal state of a failed or cancelled job to its resources.

    Compare-and-swap throughout: a resource someone else already moved (reset,
    force delete) is left alone. Returns jobs to dispatch (a chained job that
    should still run, e.g. a force delete waiting for a cancelled backup).
    """
    reason = truncate_reason(reason)
    p = job.params
    op = job.op
    if op in _FAILED_STATUS:
        # The common case: the job's own resource goes from its transient status to an
        # error status (backups also record why).
        model, transient, failed = _FAILED_STATUS[op]
        set_status(session, model, job.resource_id, transient, failed, now=now,
                   reason=reason if model is Backup else None)
    if op == "backup_create":
        _restore_source(session, job, now)
    elif op == "backup_restore":
        session.execute(update(Backup).where(Backup.id == job.resource_id,
                                             Backup.status == "restoring")
                        .values(status="available", updated_at=now))
        # A cancelled restore leaves undefined data: the target is `error`, never available.
        target_status = "error" if (cancelled or p.get("volume_is_new")) else "error_restoring"
        session.execute(update(Volume).where(Volume.id == p["volume_id"],
                                             Volume.status.in_(("restoring-backup", "creating")))
                        .values(status=target_status, updated_at=now))
    elif op == "backup_verify":
        session.execute(update(Backup).where(Backup.id == job.resource_id,
                                             Backup.verify_status == "verifying")
                        .values(verify_status="cancelled" if cancelled else "error",
                                verify_message=reason, verified_at=now))
    # The next job in the chain: a force delete still runs after a cancelled backup;
    # anything else that depended on this job fails with it.
    to_dispatch: list[Job] = []
    if job.next_job_id:
        nxt = session.get(Job, job.next_job_id)
        if nxt is not None and nxt.state == "waiting":
            if nxt.params.get("run_after_failure"):
                promoted = promote_next(session, job, now=now)
                if promoted:
                    to_dispatch.append(promoted)
            else:
                session.execute(update(Job).where(Job.id == nxt.id, Job.state == "waiting")
                                .values(state="queued", updated_at=now))
                finish(session, nxt, "failed", now=now,
                       error=f"previous job {job.op} {job.id} failed: {reason}")
                to_dispatch.extend(on_failure(session, nxt, f"{job.op} failed: {reason}",
                                              now=now))
    return to_dispatch


def abandon(session: Session, jobs: Iterable[Job], *, now: dt.datetime) -> None:
    """Undo what a request wrote when its jobs could not be queued.

    The request is answered 503 and must leave nothing behind: rows it created
    are removed (with their quota), and rows it moved go back.
    """
    for job in jobs:
        session.execute(update(Job).where(Job.id == job.id).values(
            state="cancelled", error="could not be queued", finished_at=now))
        p = job.params
        if job.op in ("backup_create", "backup_import"):
            backup = session.get(Backup, job.resource_id)
            if job.op == "backup_create":
                _restore_source(session, job, now)
            if backup is not None:
                quota.release(session, backup.project_id,
                              {"backups": 1, "backup_gigabytes": backup.size or 0}, now=now)
                if p.get("revived"):
                    backup.deleted, backup.status, backup.deleted_at = True, "deleted", now
                else:
                    session.execute(delete(BackupMetadata).where(
                        BackupMetadata.backup_id == backup.id))
                    session.delete(backup)
        elif job.op == "backup_restore":
            session.execute(update(Backup).where(Backup.id == job.resource_id,
                                                 Backup.status == "restoring")
                            .values(status="available"))
            if not p.get("volume_is_new"):
                session.execute(update(Volume).where(Volume.id == p["volume_id"],
                                                     Volume.status == "restoring-backup")
                                .values(status="available"))
        elif job.op == "volume_create":
            vol = session.get(Volume, job.resource_id)
            if vol is not None:
                quota.release(session, vol.project_id, {"volumes": 1, "gigabytes": vol.size},
                              now=now)
                session.delete(vol)
        elif job.op in ("backup_delete",):
            session.execute(update(Backup).where(Backup.id == job.resource_id,
                                                 Backup.status == "deleting")
                            .values(status=p.get("previous_status", "available")))
        elif job.op == "volume_delete":
            session.execute(update(Volume).where(Volume.id == job.resource_id,
                                                 Volume.status == "deleting")
                            .values(status=p.get("previous_status", "available")))
        elif job.op == "snapshot_create":
            snap = session.get(Snapshot, job.resource_id)
            if snap is not None:
                quota.release(session, snap.project_id, {"snapshots": 1, "gigabytes": snap.size},
                              now=now)
                session.delete(snap)
        elif job.op == "snapshot_delete":
            session.execute(update(Snapshot).where(Snapshot.id == job.resource_id,
                                                   Snapshot.status == "deleting")
                            .values(status="available"))


def requeue(session: Session, job: Job, *, host: str, now: dt.datetime, note: str) -> bool:
    """Put a job whose lease expired (or whose host is gone) back in a host queue."""
    kind = job.queue.split(".", 1)[0]
    return session.execute(update(Job).where(Job.id == job.id,
                                             Job.state.in_(("running", "queued", "waiting")))
                           .values(state="queued", lease_owner=None, lease_expires_at=None,
                                   host=host, queue=queue_for(kind, host), dispatched_at=now,
                                   dispatch_count=Job.dispatch_count + 1, error=note,
                                   updated_at=now)).rowcount == 1


def expired(session: Session, *, now: dt.datetime) -> list[Job]:
    """Running jobs whose lease has run out."""
    return list(session.scalars(select(Job).where(Job.state == "running",
                                                  Job.lease_expires_at < now)))


def undelivered(session: Session, *, now: dt.datetime, older_than: float) -> list[Job]:
    """Queued jobs not picked up ``older_than`` seconds after their last dispatch.

    The wait doubles with each re-send (capped at 64×), so a job queued behind
    a long one on a busy host is not re-sent over and over.
    """
    cutoff = now - dt.timedelta(seconds=older_than)
    candidates = session.scalars(select(Job).where(
        Job.state == "queued", or_(Job.dispatched_at.is_(None), Job.dispatched_at < cutoff)))
    return [j for j in candidates if j.dispatched_at is None or j.dispatched_at < now -
            dt.timedelta(seconds=older_than * 2 ** min(j.dispatch_count, 6))]


def orphaned_waiting(session: Session, *, now: dt.datetime, older_than: float) -> list[Job]:
    """Waiting jobs whose predecessor already ended (a crash between the two commits)."""
    from sqlalchemy.orm import aliased
    prev = aliased(Job)
    cutoff = now - dt.timedelta(seconds=older_than)
    active_prev = select(prev.id).where(prev.next_job_id == Job.id,
                                        prev.state.in_(ACTIVE_STATES)).exists()
    return list(session.scalars(select(Job).where(Job.state == "waiting", Job.created_at < cutoff,
                                                  ~active_prev)))


def leased_by(session: Session, owner: str) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.state == "running",
                                                  Job.lease_owner == owner)))
