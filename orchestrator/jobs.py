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
import logging
from collections.abc import Iterable

from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm import aliased

from orchestrator import operations
from orchestrator.logs import current_request_id
from orchestrator.models import Job
from orchestrator.models import new_id
from orchestrator.operations import Operation
from orchestrator.operations import Params
from orchestrator.operations import truncate_reason
from orchestrator.persistence import jobs as job_rows
from orchestrator.states import ACTIVE_JOB_STATES
from orchestrator.states import JobState

log = logging.getLogger(__name__)

RESUMABLE_ATTEMPTS = 3

__all__ = ["abandon", "chain", "claim", "create", "expired", "finish", "insert", "leased_by",
           "on_failure", "orphaned_waiting", "promote_next", "queue_for", "renew", "requeue",
           "truncate_reason", "undelivered"]


def queue_for(kind: str, host: str) -> str:
    """The per-host queue name: ``backup.<host>`` or ``volume.<host>``."""
    return f"{kind}.{host}"


def _job_values(op: Operation, *, resource_id: str, host: str, project_id: str | None,
                params: Params | None, state: str, now: dt.datetime) -> dict:
    return dict(id=new_id(), op=op.name, resource_type=op.resource_type,
                resource_id=resource_id, host=host, queue=queue_for(op.queue_kind, host),
                project_id=project_id, params=params.to_json() if params else {}, state=state,
                created_at=now, attempt=0,
                max_attempts=RESUMABLE_ATTEMPTS if op.resumable else 1,
                cancel_requested=False, dispatch_count=0,
                dispatched_at=now if state == JobState.QUEUED else None,
                request_id=current_request_id())


def create(session: Session, op: str, *, resource_id: str, host: str, project_id: str | None,
           params: Params | None = None, state: str = JobState.QUEUED,
           now: dt.datetime) -> Job:
    """Insert a job of operation ``op`` (flushes so its id is usable at once)."""
    job = Job(**_job_values(operations.get(op), resource_id=resource_id, host=host,
                            project_id=project_id, params=params, state=state, now=now))
    session.add(job)
    session.flush()
    return job


def insert(session: Session, op: str, *, resource_id: str, host: str, project_id: str | None,
           params: Params | None = None, now: dt.datetime) -> Job:
    """Insert a queued job with one plain INSERT (no unit-of-work flush): for hot paths.

    Returns a detached Job carrying the row's values, good for dispatch and
    views. It is not tracked: change the row with UPDATE statements, not by
    setting attributes (use ``create`` for jobs that get chained).
    """
    values = _job_values(operations.get(op), resource_id=resource_id, host=host,
                         project_id=project_id, params=params, state=JobState.QUEUED, now=now)
    job_rows.insert_row(session, values)
    return Job(**values)


def chain(first: Job, then: Job) -> None:
    """Run ``then`` after ``first`` succeeds (``then`` must be in state waiting)."""
    first.next_job_id = then.id


def claim(session: Session, job_id: str, owner: str, *, now: dt.datetime,
          ttl: float) -> Job | None:
    """Take a queued job with a lease; None if it is taken, finished or cancelled."""
    return job_rows.claim(session, job_id, owner, now=now, ttl=ttl)


def renew(session: Session, job_id: str, owner: str, *, now: dt.datetime,
          ttl: float) -> tuple[bool, bool]:
    """Extend a lease. Returns (still ours, cancel requested)."""
    return job_rows.renew(session, job_id, owner, now=now, ttl=ttl)


def finish(session: Session, job: Job, state: str, *, now: dt.datetime,
           error: str | None = None, owner: str | None = None) -> bool:
    """Move a running (or queued) job to a terminal state; False if someone else did.

    On success ``job`` carries the new state, and ``job.next_job_id`` is refreshed
    from the row as this update saw it: a force delete may have chained a job after
    ``job`` was read, and whoever ends the job must queue (or fail) that one too.
    """
    return job_rows.finish(session, job, state, now=now, error=error, owner=owner)


def record_progress(session: Session, job_id: str, *, done: int, total: int, skipped: int,
                    rate: float | None, now: dt.datetime) -> dict:
    """Write a running job's own progress: ``done`` of ``total`` bytes, of which
    ``skipped`` were holes or zero ranges (not read or written), ``rate`` the bytes per
    second actually processed. Returns what was written."""
    progress = {"bytes_done": int(done), "bytes_total": int(total),
                "bytes_skipped": int(skipped),
                "rate_bytes_per_s": round(rate) if rate is not None else None,
                "updated_at": now.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"}
    job_rows.set_progress(session, job_id, progress)
    return progress


def end_unstarted(session: Session, job: Job, state: str, *, now: dt.datetime,
                  error: str) -> bool:
    """End a job that never ran (queued, or waiting behind another) in ``state``; False if
    it had started or ended meanwhile."""
    session.execute(update(Job).where(Job.id == job.id, Job.state == JobState.WAITING)
                    .values(state=JobState.QUEUED))
    return finish(session, job, state, now=now, error=error)


def promote_next(session: Session, job: Job, *, now: dt.datetime) -> Job | None:
    """Queue the job chained after ``job``; returns it for dispatch after commit."""
    if not job.next_job_id:
        return None
    result = session.execute(update(Job).where(Job.id == job.next_job_id,
                                               Job.state == JobState.WAITING)
                             .values(state=JobState.QUEUED, dispatched_at=now, updated_at=now))
    return session.get(Job, job.next_job_id) if result.rowcount == 1 else None


def on_failure(session: Session, job: Job, reason: str, *, now: dt.datetime,
               cancelled: bool = False) -> list[Job]:
    """Apply the terminal state of a failed or cancelled job to its resources.

    Compare-and-swap throughout: a resource someone else already moved (reset,
    force delete) is left alone. Returns jobs to dispatch (a chained job that
    should still run, e.g. a force delete waiting for a cancelled backup).
    """
    reason = truncate_reason(reason)
    op = operations.get(job.op)
    op.fail(session, job, op.params(job), reason, now=now, cancelled=cancelled)
    # The next job in the chain: a force delete still runs after a cancelled backup;
    # anything else that depended on this job fails with it.
    to_dispatch: list[Job] = []
    if job.next_job_id:
        nxt = session.get(Job, job.next_job_id)
        if nxt is not None and nxt.state == JobState.WAITING:
            if (nxt.params or {}).get("run_after_failure"):
                promoted = promote_next(session, job, now=now)
                if promoted:
                    to_dispatch.append(promoted)
            else:
                end_unstarted(session, nxt, JobState.FAILED, now=now,
                              error=f"previous job {job.op} {job.id} failed: {reason}")
                to_dispatch.extend(on_failure(session, nxt, f"{job.op} failed: {reason}",
                                              now=now))
    return to_dispatch


def abandon(session: Session, jobs: Iterable[Job], *, now: dt.datetime) -> None:
    """Undo what a request wrote when its jobs could not be queued.

    The request is answered 503 and must leave nothing behind: rows it created
    are removed (with their quota), and rows it moved go back.
    """
    for first in jobs:
        for job in _with_chained(session, first):
            session.execute(update(Job).where(Job.id == job.id).values(
                state=JobState.CANCELLED, error="could not be queued", finished_at=now))
            op = operations.get(job.op)
            op.abandon(session, job, op.params(job), now=now)


def _with_chained(session: Session, job: Job) -> list[Job]:
    """``job`` and the waiting jobs chained after it (a restore after its new volume)."""
    chain = [job]
    while chain[-1].next_job_id:
        nxt = session.get(Job, chain[-1].next_job_id)
        if nxt is None or nxt.state != JobState.WAITING:
            break
        chain.append(nxt)
    return chain


def requeue(session: Session, job: Job, *, host: str, now: dt.datetime, note: str) -> bool:
    """Put a job whose lease expired (or whose host is gone) back in a host queue."""
    kind = operations.get(job.op).queue_kind
    return session.execute(update(Job).where(Job.id == job.id, Job.state.in_(ACTIVE_JOB_STATES))
                           .values(state=JobState.QUEUED, lease_owner=None,
                                   lease_expires_at=None, host=host,
                                   queue=queue_for(kind, host), dispatched_at=now,
                                   dispatch_count=Job.dispatch_count + 1, error=note,
                                   updated_at=now)).rowcount == 1


def expired(session: Session, *, now: dt.datetime) -> list[Job]:
    """Running jobs whose lease has run out."""
    return list(session.scalars(select(Job).where(Job.state == JobState.RUNNING,
                                                  Job.lease_expires_at < now)))


def undelivered(session: Session, *, now: dt.datetime, older_than: float) -> list[Job]:
    """Queued jobs not picked up ``older_than`` seconds after their last dispatch.

    The wait doubles with each re-send (capped at 64×), so a job queued behind
    a long one on a busy host is not re-sent over and over.
    """
    cutoff = now - dt.timedelta(seconds=older_than)
    candidates = session.scalars(select(Job).where(
        Job.state == JobState.QUEUED, or_(Job.dispatched_at.is_(None), Job.dispatched_at < cutoff)))
    return [j for j in candidates if j.dispatched_at is None or j.dispatched_at < now -
            dt.timedelta(seconds=older_than * 2 ** min(j.dispatch_count, 6))]


def orphaned_waiting(session: Session, *, now: dt.datetime, older_than: float) -> list[Job]:
    """Waiting jobs whose predecessor already ended (a crash between the two commits)."""
    prev = aliased(Job)
    cutoff = now - dt.timedelta(seconds=older_than)
    active_prev = select(prev.id).where(prev.next_job_id == Job.id,
                                        prev.state.in_(ACTIVE_JOB_STATES)).exists()
    return list(session.scalars(select(Job).where(Job.state == JobState.WAITING,
                                                  Job.created_at < cutoff, ~active_prev)))


def leased_by(session: Session, owner: str) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.state == JobState.RUNNING,
                                                  Job.lease_owner == owner)))


def cancel_leased_by(session: Session, owner: str) -> int:
    """Ask every job running under ``owner`` to stop (a node shutting down)."""
    return session.execute(update(Job).where(Job.state == JobState.RUNNING,
                                             Job.lease_owner == owner)
                           .values(cancel_requested=True)).rowcount


def fail_leased_by(session: Session, owner: str, reason: str, *,
                   now: dt.datetime) -> tuple[list[Job], list[Job]]:
    """End as failed every job still running under ``owner`` (nothing runs them now).

    Returns (the jobs failed, the jobs to dispatch after commit).
    """
    failed: list[Job] = []
    follow_ups: list[Job] = []
    for job in leased_by(session, owner):
        text = reason.format(what=operations.get(job.op).what)
        if finish(session, job, JobState.FAILED, now=now, error=text):
            failed.append(job)
            follow_ups.extend(on_failure(session, job, text, now=now))
    return failed, follow_ups
