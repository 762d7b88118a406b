"""The job task a storage node runs: one name for every operation, thin by design."""
from __future__ import annotations

from celery import shared_task

from orchestrator.dispatch import RUN_JOB
from orchestrator.dispatch import Publisher
from orchestrator.tasks import settings_of
from workers import manager


@shared_task(name=RUN_JOB, bind=True, acks_late=False, ignore_result=True)
def run_job(self, job_id: str) -> str:
    return manager.run_job(settings_of(self.app), job_id,
                           owner=self.request.hostname or "unknown",
                           publisher=Publisher(self.app))
