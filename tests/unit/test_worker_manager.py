"""Unit tests of the worker's job manager, in process against a real SQLite database."""
from __future__ import annotations

import types

import pytest
from sqlalchemy import event
from sqlalchemy import update

from orchestrator import db as dbmod
from orchestrator import jobs
from orchestrator.config import Settings
from orchestrator.db import utcnow
from orchestrator.migrate import upgrade
from orchestrator.models import Job
from workers import manager


@pytest.fixture
def settings(tmp_path):
    s = Settings(state_dir=str(tmp_path), broker_url="memory://")
    upgrade(s.database_url)
    return s


@pytest.fixture
def database(settings):
    d = dbmod.get_database(settings.database_url)  # the one run_job uses
    yield d
    dbmod._databases.pop(settings.database_url, None)
    d.dispose()


def _statements(database) -> list[str]:
    """SQL statements run from now on (not BEGIN/PRAGMA), on both engines."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        if not statement.lstrip().upper().startswith(("BEGIN", "PRAGMA")):
            seen.append(statement)
    for engine in {database.engine, database.write_engine}:
        event.listen(engine, "before_cursor_execute", record)
    return seen


@pytest.fixture
def clock(monkeypatch):
    """manager's monotonic clock, moved by hand."""
    now = [1000.0]
    monkeypatch.setattr(manager, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _running_job(database) -> Job:
    with database.scope() as s:
        job_id = jobs.create(s, "volume_create", resource_type="volume", resource_id="v" * 36,
                             host="h1", kind="volume", project_id="p", now=utcnow()).id
    with database.scope() as s:
        return jobs.claim(s, job_id, "w1", now=utcnow(), ttl=30)


def _request_cancel(database, job_id: str) -> None:
    with database.scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))


def test_cancelled_reads_the_job_row_at_most_once_a_second(settings, database, clock):
    job = _running_job(database)
    lease = manager.Lease(database, job.id, "w1", ttl=30)  # not started: no renewals
    run = manager.JobRun(settings, database, job, "w1", lease)
    seen = _statements(database)
    # The claim has just checked: no read during the first second.
    _request_cancel(database, job.id)
    del seen[:]
    clock[0] += 0.9
    assert run.cancelled() is False and seen == []
    clock[0] += 0.1
    assert run.cancelled() is True and len(seen) == 1
    assert lease.cancel_requested  # remembered: no further reads
    assert run.cancelled() is True and len(seen) == 1


def test_cancelled_polls_again_a_second_after_the_last_read(settings, database, clock):
    job = _running_job(database)
    lease = manager.Lease(database, job.id, "w1", ttl=30)
    run = manager.JobRun(settings, database, job, "w1", lease)
    seen = _statements(database)
    clock[0] += 1.0
    assert run.cancelled() is False and len(seen) == 1
    _request_cancel(database, job.id)
    del seen[:]
    clock[0] += 0.5
    assert run.cancelled() is False and seen == []
    clock[0] += 0.5
    assert run.cancelled() is True and len(seen) == 1


def test_cancelled_sees_what_the_lease_found_at_once(settings, database, clock):
    """Lease renewal (its own thread) finds cancellation or loss: no waiting for a poll."""
    job = _running_job(database)
    lease = manager.Lease(database, job.id, "w1", ttl=30)
    run = manager.JobRun(settings, database, job, "w1", lease)
    seen = _statements(database)
    assert run.cancelled() is False
    lease.lost = True
    assert run.cancelled() is True
    lease.lost = False
    _request_cancel(database, job.id)
    lease.renew()  # what the lease thread does every interval
    assert lease.cancel_requested
    del seen[:]
    assert run.cancelled() is True and seen == []
