"""Control-plane housekeeping run by beat on the maintenance queue."""
from __future__ import annotations

import logging

from sqlalchemy import update

from orchestrator import jobs
from orchestrator import quota
from orchestrator.config import Settings
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.models import Job

log = logging.getLogger(__name__)


def reap(settings: Settings, *, publisher) -> dict:
    """End every job whose lease expired, and re-send jobs that were never delivered."""
    from orchestrator.tasks import dispatch
    db = get_database(settings.database_url)
    reaped = 0
    follow_ups: list[Job] = []
    with db.scope() as session:
        now = utcnow()
        for job in jobs.expired(session, now=now):
            reason = (f"The worker on {job.host} stopped renewing the job lease (last owner "
                      f"{job.lease_owner}); the {job.op.replace('_', ' ')} was abandoned.")
            if jobs.finish(session, job, "failed", now=now, error=reason):
                follow_ups.extend(jobs.on_failure(session, job, reason, now=now))
                reaped += 1
                log.warning("reaped job %s (%s on %s)", job.id, job.op, job.host)
        resend = jobs.undelivered(session, now=now, older_than=settings.dispatch_resend_after)
        for job in resend + follow_ups:
            session.execute(update(Job).where(Job.id == job.id).values(dispatched_at=now))
    dispatch(db, publisher, resend + follow_ups, undo_on_failure=False)
    return {"reaped": reaped, "resent": len(resend)}


def expire_reservations(settings: Settings) -> int:
    db = get_database(settings.database_url)
    with db.scope() as session:
        return quota.expire_reservations(session, now=utcnow())


def reconcile_quota(settings: Settings) -> list:
    db = get_database(settings.database_url)
    with db.scope() as session:
        drift = quota.reconcile(session, now=utcnow())
    return drift
