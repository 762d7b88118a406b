"""A new job type is one definition: a toy operation, defined here and nowhere else, is
dispatchable, claimable, retried, reapable and abandonable through the generic machinery."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from orchestrator import db as dbmod
from orchestrator import errors
from orchestrator import hosts
from orchestrator import jobs
from orchestrator import maintenance
from orchestrator import operations
from orchestrator.config import Settings
from orchestrator.db import utcnow
from orchestrator.dispatch import Publisher
from orchestrator.dispatch import dispatch
from orchestrator.migrate import upgrade
from orchestrator.models import Job
from orchestrator.models import Volume
from orchestrator.persistence.resources import set_status
from workers import manager
from workers import operations as run_halves
from workers.datapath import TransientStoreError

# What the toy's run half does, per test: a list of exceptions to raise first.
FAILURES: list[Exception] = []


@dataclass(frozen=True)
class ToyParams(operations.Params):
    volume_id: str
    label: str = "toy"


class Toy(operations.Operation):
    """Marks a volume `maintenance` while it runs; back to available, or error on failure."""

    name = "toy_touch"
    params_type = ToyParams
    resource_type = "volume"
    queue_kind = "backup"
    resumable = True
    routable = True
    retry = operations.RetryPolicy(retries=2, first_delay=0.01)

    def complete(self, session, job, params, outcome, *, now):
        vol = session.get(Volume, params.volume_id)
        vol.status, vol.display_name = "available", f"{params.label}:{outcome}"

    def fail(self, session, job, params, reason, *, now, cancelled):
        set_status(session, Volume, params.volume_id, "maintenance", "error", now=now)

    def abandon(self, session, job, params, *, now):
        set_status(session, Volume, params.volume_id, "maintenance", "available", now=now)


class ToyRun(run_halves.RunHalf):
    operation = "toy_touch"

    def run(self, run, params):
        if FAILURES:
            raise FAILURES.pop(0)
        return "done"


@pytest.fixture
def toy():
    operations.register(Toy)
    run_halves.runs(ToyRun)
    yield operations.get("toy_touch")
    operations.unregister("toy_touch")
    run_halves.unregister("toy_touch")
    FAILURES.clear()


@pytest.fixture
def settings(tmp_path):
    s = Settings(state_dir=str(tmp_path), broker_url="memory://")
    upgrade(s.database_url)
    yield s
    dbmod._databases.pop(s.database_url, None)


@pytest.fixture
def database(settings):
    return dbmod.get_database(settings.database_url)


class FakeApp:
    """Stands in for the Celery app under Publisher: records sends, or fails like a
    broker that is down."""

    def __init__(self, fail: bool = False):
        self.sent: list[tuple[str, str]] = []
        self.fail = fail

    def send_task(self, name, *, args, queue, **_):
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((args[0], queue))


def _toy_job(database, state_of_volume="maintenance") -> tuple[str, str]:
    with database.scope() as s:
        hosts.record_heartbeat(s, "h1", [hosts.BACKUP_BINARY], zone="nova", now=utcnow())
        vol = Volume(project_id="p", user_id="u", host="h1", availability_zone="nova", size=1,
                     status=state_of_volume, display_name="v", created_at=utcnow())
        s.add(vol)
        s.flush()
        job = jobs.create(s, "toy_touch", resource_id=vol.id, host="h1", project_id="p",
                          params=ToyParams(volume_id=vol.id, label="hello"), now=utcnow())
        return vol.id, job.id


def _volume(database, volume_id):
    with database.scope(write=False) as s:
        return s.get(Volume, volume_id)


def _job(database, job_id) -> Job:
    with database.scope(write=False) as s:
        return s.get(Job, job_id)


def test_typed_params_are_the_jobs_json(database, toy):
    volume_id, job_id = _toy_job(database)
    job = _job(database, job_id)
    assert job.params == {"volume_id": volume_id, "label": "hello"}
    assert toy.params(job) == ToyParams(volume_id=volume_id, label="hello")
    assert (job.queue, job.resource_type, job.max_attempts) == ("backup.h1", "volume", 3)


def test_dispatched_claimed_and_completed(settings, database, toy):
    volume_id, job_id = _toy_job(database)
    app = FakeApp()
    dispatch(database, Publisher(app), [_job(database, job_id)], undo_on_failure=True)
    assert app.sent == [(job_id, "backup.h1")]
    assert manager.run_job(settings, job_id, owner="w1") == "succeeded"
    assert _volume(database, volume_id).display_name == "hello:done"
    assert manager.run_job(settings, job_id, owner="w1") == "skipped"  # a second delivery


def test_a_failure_ends_in_the_operations_fail(settings, database, toy):
    volume_id, job_id = _toy_job(database)
    FAILURES.append(ValueError("bad"))
    assert manager.run_job(settings, job_id, owner="w1") == "failed"
    assert _volume(database, volume_id).status == "error"
    assert _job(database, job_id).error == "ValueError: bad"


def test_transient_failures_are_retried_in_place_and_recorded(settings, database, toy):
    volume_id, job_id = _toy_job(database)
    FAILURES.extend([TransientStoreError("throttled"), TransientStoreError("timed out")])
    assert manager.run_job(settings, job_id, owner="w1") == "succeeded"
    job = _job(database, job_id)
    assert [e["retry"] for e in job.history] == [1, 2]
    assert "throttled" in job.history[0]["error"] and job.history[1]["delay_s"] == 0.02
    assert _volume(database, volume_id).status == "available"


def test_retries_are_bounded(settings, database, toy):
    volume_id, job_id = _toy_job(database)
    FAILURES.extend([TransientStoreError("down")] * 3)
    assert manager.run_job(settings, job_id, owner="w1") == "failed"
    assert len(_job(database, job_id).history) == 2
    assert _volume(database, volume_id).status == "error"


def test_reaped_after_a_lost_lease(settings, database, toy):
    """Resumable: re-queued on a live host and re-sent; out of attempts: failed."""
    volume_id, job_id = _toy_job(database)
    with database.scope() as s:
        jobs.claim(s, job_id, "dead-worker", now=utcnow() - dt.timedelta(seconds=120), ttl=1)
    app = FakeApp()
    counts = maintenance.reap(settings, publisher=Publisher(app))
    assert counts["resumed"] == 1 and app.sent == [(job_id, "backup.h1")]
    assert _job(database, job_id).state == "queued"
    with database.scope() as s:
        s.execute(Job.__table__.update().where(Job.id == job_id).values(attempt=3))
        jobs.claim(s, job_id, "dead-worker", now=utcnow() - dt.timedelta(seconds=120), ttl=1)
    counts = maintenance.reap(settings, publisher=Publisher(FakeApp()))
    assert counts["failed"] == 1
    assert _job(database, job_id).state == "failed"
    assert _volume(database, volume_id).status == "error"


def test_abandoned_when_the_broker_is_down(database, toy):
    volume_id, job_id = _toy_job(database)
    with pytest.raises(errors.BrokerUnavailable):
        dispatch(database, Publisher(FakeApp(fail=True)), [_job(database, job_id)],
                 undo_on_failure=True)
    assert _job(database, job_id).state == "cancelled"
    assert _volume(database, volume_id).status == "available"


def test_every_registered_operation_has_a_run_half():
    assert set(operations.REGISTRY) == set(run_halves.RUNNERS)
    with pytest.raises(ValueError):
        operations.register(type(operations.get("backup_create")))


def test_orchestrator_imports_nothing_of_workers():
    """Run in a fresh interpreter: importing every orchestrator module loads no worker code."""
    skip = ("orchestrator.celery_app", "orchestrator.wsgi", "orchestrator.__main__")
    code = ("import pkgutil, importlib, sys, orchestrator\n"
            "for m in pkgutil.walk_packages(orchestrator.__path__, 'orchestrator.'):\n"
            f"    if m.name not in {skip!r}:\n"
            "        importlib.import_module(m.name)\n"
            "bad = sorted(n for n in sys.modules if n == 'workers' or n.startswith('workers.'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_history_is_empty_for_a_job_that_ran_once(settings, database, toy):
    _, job_id = _toy_job(database)
    assert manager.run_job(settings, job_id, owner="w1") == "succeeded"
    with database.scope(write=False) as s:
        assert s.scalar(select(Job.history).where(Job.id == job_id)) is None
