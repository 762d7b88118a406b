"""Celery wiring: the app factory and the maintenance tasks.

The job task (``workers/tasks.py``) takes a job id, which is also the Celery
task id, and hands it to the worker's job manager; publishing is
``orchestrator/dispatch.py``. Maintenance tasks run on the ``orchestrator`` queue,
on a control-plane worker, so a dead storage node never stops the reaping of
its own jobs. Settings follow celery-notes.md: early ack, prefetch 1 and
prefetch disabled on Redis (nothing long sits unacked, so the visibility
timeout cannot duplicate a job), results ignored (state lives in SQL), and
task events on for Flower.
"""
from __future__ import annotations

import logging

from celery import Celery
from celery import shared_task
from celery import signals
from celery.schedules import schedule

from orchestrator import logs
from orchestrator import maintenance
from orchestrator.config import Settings
from orchestrator.dispatch import Publisher
from orchestrator.policies import service as policies

log = logging.getLogger(__name__)

MAINTENANCE_QUEUE = "orchestrator"
JOB_TIME_LIMIT = 24 * 3600


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app for API, workers, beat and Flower."""
    app = Celery("orchestrator", broker=settings.broker_url, set_as_current=False)
    vt = 6 * 3600
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=settings.broker_url.startswith("redis"),
        broker_transport_options={"visibility_timeout": vt},
        visibility_timeout=vt,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2.0,
        broker_pool_limit=10,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_time_limit=JOB_TIME_LIMIT,
        worker_soft_shutdown_timeout=30,
        worker_hijack_root_logger=False,
        task_default_queue=MAINTENANCE_QUEUE,
        task_create_missing_queues=True,
        broker_channel_error_retry=True,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "reap-expired-leases": {
                "task": "orchestrator.tasks.reap", "schedule": schedule(settings.reaper_interval),
                "options": {"queue": MAINTENANCE_QUEUE, "expires": settings.reaper_interval * 4}},
            "expire-reservations": {
                "task": "orchestrator.tasks.expire_reservations", "schedule": schedule(300.0),
                "options": {"queue": MAINTENANCE_QUEUE, "expires": 600}},
            "reconcile-quota": {
                "task": "orchestrator.tasks.reconcile_quota", "schedule": schedule(3600.0),
                "options": {"queue": MAINTENANCE_QUEUE, "expires": 3600}},
            # Each store is collected every gc_interval; the round looks more often so that
            # a new store, or one whose host was down, does not wait a whole interval.
            "collect-garbage": {
                "task": "orchestrator.tasks.collect_garbage",
                "schedule": schedule(_gc_round(settings)),
                "options": {"queue": MAINTENANCE_QUEUE, "expires": _gc_round(settings) * 2}},
            "backup-policies": {
                "task": "orchestrator.tasks.policy_tick",
                "schedule": schedule(settings.policy_tick_interval),
                "options": {"queue": MAINTENANCE_QUEUE,
                            "expires": max(settings.policy_tick_interval * 4, 2.0)}},
        },
    )
    app.conf.orchestrator_settings = settings

    return app


def _gc_round(settings: Settings) -> float:
    return max(1.0, min(settings.gc_interval or 3600.0, 300.0))


@signals.setup_logging.connect(weak=False)
def _configure_logging(loglevel=None, **_) -> None:
    """Celery's processes (workers, beat) log as every other one: ORCH_LOG_FORMAT lines with
    the request id, instead of Celery's own text set-up."""
    settings = Settings.from_env()
    logs.configure(loglevel or settings.log_level, settings.log_format)


def settings_of(app: Celery) -> Settings:
    """The settings the running app was built with."""
    return app.conf.orchestrator_settings


# Maintenance tasks: importable names, registered on every app (shared_task), each
# handed the app that runs it.


@shared_task(name="orchestrator.tasks.reap", bind=True, acks_late=True, ignore_result=True)
def reap(self) -> dict:
    return maintenance.reap(settings_of(self.app), publisher=Publisher(self.app))


@shared_task(name="orchestrator.tasks.expire_reservations", bind=True, acks_late=True,
             ignore_result=True)
def expire_reservations(self) -> int:
    return maintenance.expire_reservations(settings_of(self.app))


@shared_task(name="orchestrator.tasks.reconcile_quota", bind=True, acks_late=True,
             ignore_result=True)
def reconcile_quota(self) -> list:
    return maintenance.reconcile_quota(settings_of(self.app))


@shared_task(name="orchestrator.tasks.collect_garbage", bind=True, acks_late=True,
             ignore_result=True)
def collect_garbage(self) -> int:
    return maintenance.collect_garbage(settings_of(self.app), publisher=Publisher(self.app))
@shared_task(name="orchestrator.tasks.policy_tick", bind=True, acks_late=True,
             ignore_result=True)
def policy_tick(self) -> dict:
    """Run the backup policies that are due (orchestrator/policies/service.py)."""
    return policies.tick(settings_of(self.app), publisher=Publisher(self.app))
