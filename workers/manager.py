"""Runs jobs on a storage node: claim, lease, run half, terminal state — for any operation.

Every job goes through ``run_job``: it claims the job row (a duplicate
delivery finds it taken and returns) and runs the operation's prepare in the
same transaction, keeps the lease alive from a side thread while the run
half works, retries a transient failure in place (``Operation.retry``), and
ends the job in exactly one transaction that also applies the operation's
``complete``. Any exception ends in the operation's ``fail``, the same
failure handling the reaper applies to a dead worker's jobs.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Any

from sqlalchemy.exc import DBAPIError

from orchestrator import jobs
from orchestrator import logs
from orchestrator import operations
from orchestrator.config import Settings
from orchestrator.db import Database
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.dispatch import Publisher
from orchestrator.dispatch import dispatch
from orchestrator.models import Job
from orchestrator.persistence import jobs as job_rows
from orchestrator.states import JobState
from workers import metrics
from workers.datapath import BackupCancelled
from workers.datapath import DataPathError
from workers.datapath import StoreError
from workers.jobrun import JobCancelled
from workers.jobrun import JobRun
from workers.jobrun import Lease
from workers.operations import RUNNERS

log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying in place: the store said so, or the database link broke."""
    if isinstance(exc, StoreError):
        return exc.kind == "transient"
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    return False


class Ending(str):
    """A job's terminal state as ``run_job`` returns it (compares as the state string),
    with the public reason of a failure (None otherwise)."""

    reason: str | None

    def __new__(cls, state: str, reason: str | None = None) -> Ending:
        ending = super().__new__(cls, state)
        ending.reason = reason
        return ending


def run_job(settings: Settings, job_id: str, *, owner: str,
            publisher: Publisher | None = None) -> Ending:
    """Execute one job to a terminal state; returns that state (or 'skipped').

    ``publisher`` sends the jobs that follow this one (a chained delete, the
    restore after its volume): the running worker's own app, never a new one.
    While the job runs, every log line carries its id and its request id.
    """
    db = get_database(settings.database_url)
    prepared = prepare_error = None
    with db.scope() as session:
        job = jobs.claim(session, job_id, owner, now=utcnow(), ttl=settings.lease_ttl)
        if job is not None:
            op = operations.get(job.op)
            runner = RUNNERS[job.op]
            try:
                with logs.bound(job.request_id or logs.current_request_id(), job.id):
                    params = op.params(job)
                    # In the claim's transaction: one commit fewer, and what it reads the
                    # run half does not read again.
                    prepared = runner.prepare(session, job, params)
            except DBAPIError:
                raise  # the claim is rolled back with it: the job stays queued for a re-send
            except Exception as exc:  # the claim commits, and the job fails below
                prepare_error = exc
    if job is None:
        log.info("job %s is not queued (duplicate delivery, cancelled or done): skipped", job_id)
        return Ending("skipped")
    with logs.bound(job.request_id or logs.current_request_id(), job.id):
        return _run_claimed(settings, db, job, op, runner, params, prepared, prepare_error,
                            owner=owner, publisher=publisher)


def _run_claimed(settings: Settings, db: Database, job: Job, op, runner, params, prepared,
                 prepare_error: Exception | None, *, owner: str,
                 publisher: Publisher | None) -> Ending:
    lease = Lease(db, job.id, owner, settings.lease_ttl)
    lease.start()
    log.info("job %s %s on %s: started (attempt %d)", job.id, job.op, job.resource_id,
             job.attempt)
    metrics.job_started(job.op)
    started = time.monotonic()
    outcome = None
    try:
        try:
            if prepare_error is not None:
                raise prepare_error
            run = JobRun(settings, db, job, owner, lease, prepared)
            outcome = _run_with_retries(run, op, runner, params)
            state, follow_ups = _complete(run, op, params, outcome)
            reason = None
        except Exception as exc:
            state, follow_ups, reason = _fail(db, job, op, exc, owner)
    finally:
        lease.stop()
    metrics.job_finished(job.op, state, time.monotonic() - started, outcome)
    if follow_ups and publisher is not None:
        dispatch(db, publisher, follow_ups, undo_on_failure=False)
    elif follow_ups:  # no broker at hand (tests): the reaper's re-send delivers them
        log.warning("job %s: %d follow-up job(s) left for the re-send", job.id, len(follow_ups))
    log.info("job %s %s: %s", job.id, job.op, state)
    return Ending(state, reason)


def _run_with_retries(run: JobRun, op, runner, params) -> Any:
    """The run half, retried in place after a transient failure (recorded in the history)."""
    retry = 0
    while True:
        try:
            return runner.run(run, params)
        except Exception as exc:
            retry += 1
            if not is_transient(exc) or retry > op.retry.retries or run.cancelled():
                raise
            delay = op.retry.backoff(retry)
            log.warning("job %s %s: transient failure (%s: %s); retry %d of %d in %.1f s",
                        run.job.id, run.job.op, exc.__class__.__name__, exc, retry,
                        op.retry.retries, delay)
            _record(run.db, run.job, {"event": "retry", "retry": retry, "delay_s": delay,
                                      "error": jobs.truncate_reason(
                                          f"{exc.__class__.__name__}: {exc}")})
            time.sleep(delay)


def _record(db: Database, job: Job, event: dict) -> None:
    try:
        with db.scope() as session:
            job_rows.append_history(session, job, {"at": utcnow().isoformat(), **event})
    except Exception:  # the history is for people; a failure to write it changes nothing
        log.exception("could not record %s in the history of job %s", event, job.id)


def _complete(run: JobRun, op, params, outcome) -> tuple[str, list[Job]]:
    """Finish the job as succeeded and apply the operation's completion atomically."""
    with run.db.scope() as session:
        now = utcnow()
        if not jobs.finish(session, run.job, JobState.SUCCEEDED, now=now, owner=run.owner):
            log.warning("job %s lost its lease before completing; its result is dropped",
                        run.job.id)
            return JobState.SUCCEEDED, []
        follow_ups = [jobs.create(session, f.op, resource_id=f.resource_id, host=f.host,
                                  project_id=f.project_id, params=f.params, now=now)
                      for f in op.complete(session, run.job, params, outcome, now=now) or ()]
        # finish refreshed run.job.next_job_id: a force delete may have chained a job
        # after this one meanwhile.
        nxt = jobs.promote_next(session, run.job, now=now)
        return JobState.SUCCEEDED, follow_ups + ([nxt] if nxt else [])


def _fail(db: Database, job: Job, op, exc: Exception,
          owner: str) -> tuple[str, list[Job], str]:
    cancelled = isinstance(exc, (JobCancelled, BackupCancelled))
    state = JobState.CANCELLED if cancelled else JobState.FAILED
    if cancelled:
        detail = reason = f"{op.what} was cancelled"
    else:
        detail = f"{exc.__class__.__name__}: {str(exc) or exc.__class__.__name__}"
        reason = public_reason(op, exc, detail)
        if isinstance(exc, _NAMED_FAILURES):
            log.error("job %s %s failed: %s", job.id, job.op, detail)
        else:  # anything else may be a bug: keep the traceback
            log.exception("job %s %s failed", job.id, job.op)
    with db.scope() as session:
        # finish refreshes job.next_job_id: a force delete may have chained a job after
        # this one meanwhile.
        if jobs.finish(session, job, state, now=utcnow(), error=detail, owner=owner):
            return state, jobs.on_failure(session, job, reason, now=utcnow(),
                                          cancelled=cancelled), reason
    return state, [], reason


# Failures whose message is meant for people: the data path's, and the run halves' own
# checks (ValueError, RuntimeError). Anything else may be a bug.
_NAMED_FAILURES = (DataPathError, ValueError, RuntimeError)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\":]+/)*([^\s'\":/]+)")


def public_reason(op, exc: Exception, detail: str) -> str:
    """The failure as a tenant may read it (a backup's fail_reason): no server paths and
    no internals. The full detail stays in the job row and the worker's log."""
    if isinstance(exc, _NAMED_FAILURES):
        return _ABSOLUTE_PATH.sub(r"\1", detail)  # a file keeps its name, not its directory
    return (f"The {op.what} failed because of an internal error "
            f"({exc.__class__.__name__}); an administrator can find the details in the "
            "worker's log.")


def cleanup_after_restart(settings: Settings, owners: list[str], *,
                          publisher: Publisher | None = None) -> int:
    """Fail the jobs a previous run of this worker left running (nothing runs them now),
    and remove what they had written."""
    db = get_database(settings.database_url)
    with db.scope(write=False) as session:
        left = [job for owner in owners for job in jobs.leased_by(session, owner)]
    for job in left:  # first: once the rows say failed, nothing may be left to find
        _forget_partial(settings, job)
    failed: list[Job] = []
    follow_ups: list[Job] = []
    with db.scope() as session:
        for owner in owners:
            done, more = jobs.fail_leased_by(
                session, owner, f"the worker {owner} restarted while the {{what}} ran",
                now=utcnow())
            failed.extend(done)
            follow_ups.extend(more)
    if follow_ups and publisher is not None:
        dispatch(db, publisher, follow_ups, undo_on_failure=False)
    return len(failed)


def end_lost_job(settings: Settings, job_id: str, *, owner: str, why: str,
                 publisher: Publisher | None = None) -> bool:
    """End at once a job whose pool process died under it (the worker's parent saw it):
    failed, its resources put back, its partial objects removed. False if it had ended."""
    db = get_database(settings.database_url)
    with db.scope(write=False) as session:
        job = session.get(Job, job_id)
    if job is None or job.state != JobState.RUNNING or job.lease_owner != owner:
        return False
    _forget_partial(settings, job)  # first: once the rows say failed, nothing is left
    reason = f"the process running the {operations.get(job.op).what} died ({why})"
    with db.scope() as session:
        if not jobs.finish(session, job, JobState.FAILED, now=utcnow(), error=reason,
                           owner=owner):
            return False
        follow_ups = jobs.on_failure(session, job, reason, now=utcnow())
    log.error("job %s %s: %s", job.id, job.op, reason)
    if follow_ups and publisher is not None:
        dispatch(db, publisher, follow_ups, undo_on_failure=False)
    return True


def _forget_partial(settings: Settings, job: Job) -> None:
    """What a job that died left in the store goes (its run half knows what that is)."""
    try:
        RUNNERS[job.op].lost(settings, job)
    except Exception:  # best effort: the rows already say the job failed
        log.exception("could not remove what job %s (%s) left behind", job.id, job.op)
