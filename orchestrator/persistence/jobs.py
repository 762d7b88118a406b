"""Job rows: the claim, lease renewal and terminal update, built once.

Bound parameters rule out the session's in-Python synchronization: a claimed
row is loaded afresh instead, and a finished job object is kept in step with
``set_committed_value`` (it may be attached or detached).
"""
from __future__ import annotations

import datetime as dt
import functools

from sqlalchemy import bindparam
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from orchestrator.db import dialect_of
from orchestrator.models import Job
from orchestrator.states import JobState

_INSERT_JOB = insert(Job.__table__)

_CLAIM = (update(Job)
          .where(Job.id == bindparam("job_id"), Job.state == JobState.QUEUED,
                 Job.cancel_requested.is_(False))
          .values(state=JobState.RUNNING, attempt=Job.attempt + 1,
                  lease_owner=bindparam("owner"), lease_expires_at=bindparam("expires"),
                  started_at=bindparam("now"), updated_at=bindparam("now"))
          .execution_options(synchronize_session=False))
_CLAIM_RETURNING = _CLAIM.returning(Job).execution_options(populate_existing=True)


def returning(session: Session) -> bool:
    """Whether UPDATE ... RETURNING is available (PostgreSQL; SQLite 3.35 and later)."""
    return dialect_of(session).update_returning


def insert_row(session: Session, values: dict) -> None:
    """One plain INSERT, no unit-of-work flush (the hot path of every create)."""
    session.execute(_INSERT_JOB, values)


def claim(session: Session, job_id: str, owner: str, *, now: dt.datetime,
          ttl: float) -> Job | None:
    """Queued → running with a lease, in one round trip where RETURNING exists."""
    params = {"job_id": job_id, "owner": owner, "now": now,
              "expires": now + dt.timedelta(seconds=ttl)}
    if returning(session):
        return session.scalars(_CLAIM_RETURNING, params).one_or_none()
    if session.execute(_CLAIM, params).rowcount != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def renew(session: Session, job_id: str, owner: str, *, now: dt.datetime,
          ttl: float) -> tuple[bool, bool]:
    """Extend a lease. Returns (still ours, cancel requested)."""
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING,
                          Job.lease_owner == owner)
        .values(lease_expires_at=now + dt.timedelta(seconds=ttl)))
    cancel = bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
    return result.rowcount == 1, cancel


@functools.cache
def _finish_statement(owned: bool, with_returning: bool):
    """UPDATE a job to a terminal state (built once per shape)."""
    cond = [Job.id == bindparam("b_job_id"), Job.state.in_((JobState.QUEUED, JobState.RUNNING))]
    if owned:
        cond.append(Job.lease_owner == bindparam("b_owner"))
    stmt = update(Job).where(*cond).values(
        state=bindparam("b_state"), error=bindparam("b_error"), finished_at=bindparam("b_now"),
        lease_expires_at=None, updated_at=bindparam("b_now")).execution_options(
        synchronize_session=False)
    return stmt.returning(Job.next_job_id) if with_returning else stmt


def finish(session: Session, job: Job, state: str, *, now: dt.datetime, error: str | None,
           owner: str | None) -> bool:
    """The terminal UPDATE; on success ``job`` carries the row as it now is, with
    ``next_job_id`` as this update saw it."""
    params = {"b_job_id": job.id, "b_owner": owner, "b_state": state, "b_error": error,
              "b_now": now}
    with_returning = returning(session)
    result = session.execute(_finish_statement(owner is not None, with_returning), params)
    if with_returning:
        row = result.first()
        if row is None:
            return False
        next_job_id = row[0]
    else:
        if result.rowcount != 1:
            return False
        next_job_id = session.scalar(select(Job.next_job_id).where(Job.id == job.id))
    for key, value in (("state", state), ("error", error), ("finished_at", now),
                       ("lease_expires_at", None), ("updated_at", now),
                       ("next_job_id", next_job_id)):
        set_committed_value(job, key, value)
    return True


def append_history(session: Session, job: Job, event: dict) -> None:
    """Add one event to the job's history (retries, re-sends: rare, so read-modify-write)."""
    history = list(session.scalar(select(Job.history).where(Job.id == job.id)) or [])
    history.append(event)
    session.execute(update(Job).where(Job.id == job.id).values(history=history)
                    .execution_options(synchronize_session=False))
    set_committed_value(job, "history", history)


_SET_PROGRESS = (update(Job).where(Job.id == bindparam("job_id"))
                 .values(progress=bindparam("progress"))
                 .execution_options(synchronize_session=False))


def set_progress(session: Session, job_id: str, progress: dict) -> None:
    """Write a running job's own progress (see Job.progress)."""
    session.execute(_SET_PROGRESS, {"job_id": job_id, "progress": progress})
