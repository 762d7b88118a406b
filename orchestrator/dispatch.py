"""Publishing committed jobs to their queues: the only place that knows how a job
reaches its host.

No Celery wiring lives here: a ``Publisher`` wraps whatever running Celery
app the process has (the API's, a worker's own, the maintenance worker's),
so nothing builds a second app to send a follow-up.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from kombu.exceptions import OperationalError as KombuOperationalError

from orchestrator import errors
from orchestrator import jobs as jobs_mod
from orchestrator.config import without_password
from orchestrator.db import utcnow
from orchestrator.models import Job

log = logging.getLogger(__name__)

# The task a message names is the job's operation (backup_create, backup_restore, ...), so
# Flower and the worker's log tell a backup from a restore; every such task runs the same
# generic job manager. RUN_JOB, the one name of earlier releases, stays registered on the
# workers for the messages still queued under it.
RUN_JOB = "orchestrator.tasks.run_job"


def task_name(op: str) -> str:
    """The Celery task that runs jobs of operation ``op``: the operation's name."""
    return op


PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                 "interval_max": 0.5}


class Publisher:
    """Sends job messages through a running Celery app."""

    def __init__(self, app):
        self.app = app

    def send(self, job: Job) -> None:
        """Publish one job to its host queue (the Celery task id is the job id, the task
        name its operation, and the request id rides along for the worker's log lines and
        Flower's task arguments).

        :raises BrokerUnavailable: when the broker cannot take the message.
        """
        kwargs = {"request_id": job.request_id} if job.request_id else {}
        try:
            self.app.send_task(task_name(job.op), args=[job.id], kwargs=kwargs,
                               task_id=job.id, queue=job.queue, routing_key=job.queue,
                               ignore_result=True, retry=True, retry_policy=PUBLISH_RETRY)
        except (KombuOperationalError, OSError, ConnectionError) as exc:
            raise errors.BrokerUnavailable(without_password(str(exc)) or
                                           exc.__class__.__name__) from exc


def dispatch(db, publisher: Publisher, jobs: Iterable[Job], *, undo_on_failure: bool) -> None:
    """Publish jobs after their transaction committed.

    With ``undo_on_failure`` (API requests) a broker failure abandons every
    job of the request, undoing what it wrote, and raises 503; otherwise the
    job stays queued and the maintenance re-send delivers it later.

    :raises BrokerUnavailable:
    """
    pending = list(jobs)
    for index, job in enumerate(pending):
        try:
            publisher.send(job)
        except Exception as exc:
            if not undo_on_failure:
                log.warning("job %s (%s) not delivered, the re-send will retry: %s",
                            job.id, job.op, exc)
                continue
            with db.scope() as session:
                rows = [session.get(Job, j.id) for j in pending[index:]]
                jobs_mod.abandon(session, [r for r in rows if r is not None], now=utcnow())
            raise
