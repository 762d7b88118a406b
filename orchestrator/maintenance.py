"""Control-plane housekeeping run by beat on the maintenance queue.

The reaper never depends on a dead host coming back: a job whose lease
expired is re-run when it is idempotent (on its host if that host is alive,
else on another live host of the zone when the operation allows it) and is
otherwise ended with the same failure handling a worker applies. A queued job
that was never picked up is re-sent to a live host, re-routed, or failed.
"""
from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator import errors
from orchestrator import hosts
from orchestrator import jobs
from orchestrator import operations
from orchestrator import quota
from orchestrator import storage
from orchestrator.config import Settings
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.dispatch import dispatch
from orchestrator.models import Job
from orchestrator.models import Service
from orchestrator.states import JobState

log = logging.getLogger(__name__)

BINARY_OF_KIND = {"backup": hosts.BACKUP_BINARY, "volume": hosts.VOLUME_BINARY}


def _live_target(session: Session, settings: Settings, job: Job, now) -> str | None:
    """The host that should run ``job`` now: its own if alive, else a re-route, else None."""
    op = operations.get(job.op)
    binary = BINARY_OF_KIND[op.queue_kind]
    own = session.scalar(select(Service).where(Service.host == job.host,
                                               Service.binary == binary))
    if own is not None and not own.disabled and hosts.is_up(
            own, now=now, down_time=settings.service_down_time):
        return job.host
    if not op.routable:
        return None
    try:
        return hosts.select_host(session, binary, now=now, down_time=settings.service_down_time,
                                 az=own.availability_zone if own else None)
    except errors.NoLiveHost:
        return None


def _fail(session: Session, job: Job, reason: str, now) -> list[Job]:
    if jobs.finish(session, job, JobState.FAILED, now=now, error=reason):
        log.warning("job %s (%s on %s) failed by the reaper: %s", job.id, job.op, job.host,
                    reason)
        return jobs.on_failure(session, job, reason, now=now)
    return []


def reap(settings: Settings, *, publisher) -> dict:
    """End or re-run jobs whose lease expired; deliver jobs that were never picked up."""
    db = get_database(settings.database_url)
    counts = {"failed": 0, "resumed": 0, "resent": 0, "rerouted": 0}
    to_send: list[Job] = []
    with db.scope() as session:
        now = utcnow()
        for job in jobs.expired(session, now=now):
            op = operations.get(job.op)
            what = op.what
            target = _live_target(session, settings, job, now) \
                if op.resumable and job.attempt < job.max_attempts else None
            if target and jobs.requeue(session, job, host=target, now=now,
                                       note=f"lease of {job.lease_owner} expired; re-run"):
                to_send.append(job)
                counts["resumed"] += 1
                continue
            reason = (f"The worker {job.lease_owner} on {job.host} stopped renewing the lease of "
                      f"the {what} (it died or lost the database); the {what} was abandoned. "
                      "Retry the operation.")
            to_send.extend(_fail(session, job, reason, now))
            counts["failed"] += 1
        for job in jobs.orphaned_waiting(session, now=now,
                                         older_than=settings.dispatch_resend_after):
            prev = session.scalar(select(Job).where(Job.next_job_id == job.id))
            if prev is None or prev.state == JobState.SUCCEEDED or \
                    (job.params or {}).get("run_after_failure"):
                jobs.requeue(session, job, host=job.host, now=now, note="predecessor ended")
                counts["resent"] += 1
                to_send.append(job)
            else:
                to_send.extend(jobs.on_failure(session, prev, prev.error or "failed", now=now))
                counts["failed"] += 1
        for job in jobs.undelivered(session, now=now, older_than=settings.dispatch_resend_after):
            target = _live_target(session, settings, job, now)
            if target is None:
                reason = (f"The {operations.get(job.op).what} was queued for {job.host}, "
                          "which is "
                          "down, and no other live host can run it.")
                to_send.extend(_fail(session, job, reason, now))
                counts["failed"] += 1
                continue
            if target != job.host:
                counts["rerouted"] += 1
            jobs.requeue(session, job, host=target, now=now, note=job.error)
            to_send.append(job)
            counts["resent"] += 1
    if to_send:
        with db.scope(write=False) as session:
            fresh = [session.get(Job, j.id) for j in to_send]
        dispatch(db, publisher,
                 [j for j in fresh if j is not None and j.state == JobState.QUEUED],
                 undo_on_failure=False)
    if any(counts.values()):
        log.info("reaper: %s", counts)
    return counts


def expire_reservations(settings: Settings) -> int:
    db = get_database(settings.database_url)
    with db.scope() as session:
        return quota.expire_reservations(session, now=utcnow())


def reconcile_quota(settings: Settings) -> list:
    """Repair usage drift; each correction is logged as a warning and returned."""
    db = get_database(settings.database_url)
    with db.scope() as session:
        return quota.reconcile(session, now=utcnow())


def collect_garbage(settings: Settings, *, publisher) -> int:
    """Queue a full collection of every known store that is due; returns how many."""
    if not settings.gc_interval:
        return 0
    db = get_database(settings.database_url)
    with db.scope() as session:
        queued = storage.schedule(session, settings, now=utcnow())
    if queued:
        dispatch(db, publisher, queued, undo_on_failure=False)
        log.info("garbage collection queued for %d store(s)", len(queued))
    return len(queued)
