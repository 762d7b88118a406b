"""The job tasks a storage node runs: one per operation name, thin by design.

Every operation of the registry (``backup_create``, ``backup_restore``, ...)
is a Celery task of that name, so Flower and Celery's events tell them apart;
each hands its job id to the same generic job manager. A job that ends
failed makes its task a FAILURE, with the job's public reason, by raising
``JobFailed`` *after* the job's terminal state is recorded: nothing retries
the task (no autoretry), and the exception is an expected one (``throws``),
so Celery logs it as one line, without a traceback.
"""
from __future__ import annotations

from celery import shared_task
from celery import signals

from orchestrator import logs
from orchestrator import operations
from orchestrator.dispatch import RUN_JOB
from orchestrator.dispatch import Publisher
from orchestrator.dispatch import task_name
from orchestrator.states import JobState
from orchestrator.tasks import settings_of
from workers import manager


class JobFailed(Exception):
    """The job ended failed; its state and reason are already in the database."""


def run_job(self, job_id: str, request_id: str | None = None) -> str:
    """Run one job; :raises JobFailed: when it ended failed (Celery's FAILURE)."""
    with logs.bound(logs.valid_request_id(request_id), job_id):
        ending = manager.run_job(settings_of(self.app), job_id,
                                 owner=self.request.hostname or "unknown",
                                 publisher=Publisher(self.app))
    if ending == JobState.FAILED:
        raise JobFailed(ending.reason or "the job failed")
    return str(ending)


_OPTIONS = dict(bind=True, acks_late=False, ignore_result=True, throws=(JobFailed,))
TASKS = {name: shared_task(name=task_name(name), **_OPTIONS)(run_job)
         for name in sorted(operations.REGISTRY)}
TASKS[RUN_JOB] = shared_task(name=RUN_JOB, **_OPTIONS)(run_job)


@signals.task_prerun.connect(weak=False)
def _bind_ids(task_id=None, task=None, kwargs=None, **_) -> None:
    """From the task's start to its end, Celery's own lines about it (``succeeded in``,
    ``raised expected``) carry the job and request ids too, not only the manager's."""
    if task is not None and task.name in TASKS:
        logs.REQUEST_ID.set(logs.valid_request_id((kwargs or {}).get("request_id")))
        logs.JOB_ID.set(task_id)


@signals.task_postrun.connect(weak=False)
def _unbind_ids(task=None, **_) -> None:
    if task is not None and task.name in TASKS:
        logs.REQUEST_ID.set(None)
        logs.JOB_ID.set(None)
