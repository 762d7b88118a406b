"""Unit tests of the worker's job manager, in process against a real SQLite database."""
from __future__ import annotations

import types

import pytest
from sqlalchemy import event
from sqlalchemy import update

from orchestrator import api
from orchestrator import db as dbmod
from orchestrator import hosts
from orchestrator import jobs
from orchestrator.config import Settings
from orchestrator.context import RequestContext
from orchestrator.db import utcnow
from orchestrator.keys import create_kek_file
from orchestrator.migrate import upgrade
from orchestrator.models import Backup
from orchestrator.models import Job
from orchestrator.models import Volume
from orchestrator.operations.volumes import SnapshotParams
from workers import jobrun
from workers import manager
from workers.datapath import ChunkedDriver
from workers.jobrun import JobCancelled
from workers.jobrun import JobRun
from workers.jobrun import Lease
from workers.operations import RUNNERS
from workers.operations import RunHalf
from workers.volumes import FileVolumeBackend


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    url = ""  # the default: SQLite in state_dir
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").url
    s = Settings(state_dir=str(tmp_path), broker_url="memory://", database_url=url)
    upgrade(s.database_url)
    create_kek_file(s.kek_file)       # encryption is on by default
    return s


# A project's first backup makes its encryption keys (orchestrator/keys.py): a SELECT,
# a savepoint with the two INSERTs, and its release; later backups only SELECT them.
FIRST_KEYS = 6


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
    # On PostgreSQL the read engine is a view of the write engine (same pool and events).
    engines = {database.engine, database.write_engine} if database.is_sqlite \
        else {database.write_engine}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    return seen


@pytest.fixture
def clock(monkeypatch):
    """manager's monotonic clock, moved by hand."""
    now = [1000.0]
    monkeypatch.setattr(jobrun, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _running_job(database) -> Job:
    with database.scope() as s:
        job_id = jobs.create(s, "volume_create", resource_id="v" * 36,
                             host="h1", project_id="p", now=utcnow()).id
    with database.scope() as s:
        return jobs.claim(s, job_id, "w1", now=utcnow(), ttl=30)


def _request_cancel(database, job_id: str) -> None:
    with database.scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))


def test_cancelled_reads_the_job_row_at_most_once_a_second(settings, database, clock):
    job = _running_job(database)
    lease = Lease(database, job.id, "w1", ttl=30)  # not started: no renewals
    run = JobRun(settings, database, job, "w1", lease)
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
    lease = Lease(database, job.id, "w1", ttl=30)
    run = JobRun(settings, database, job, "w1", lease)
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
    lease = Lease(database, job.id, "w1", ttl=30)
    run = JobRun(settings, database, job, "w1", lease)
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


# ----------------------------------------------------------------------------- run_job

GiB = 1024 ** 3
DEMO = RequestContext("demo", "demo")


@pytest.fixture
def node(settings, database):
    with database.scope() as s:
        hosts.record_heartbeat(s, "node1", [hosts.BACKUP_BINARY, hosts.VOLUME_BINARY],
                               zone="nova", now=utcnow())


def _volume(settings, database, *, image: bool) -> str:
    with database.scope() as s:
        vol = Volume(project_id="demo", user_id="demo", host="node1", availability_zone="nova",
                     size=1, status="available", display_name="src", created_at=utcnow())
        s.add(vol)
        s.flush()
        volume_id = vol.id
    if image:
        FileVolumeBackend(settings.volume_path).create_volume(volume_id, 1)  # sparse 1 GiB
    return volume_id


def _backup(settings, database, volume_id: str, **kw) -> tuple[str, str]:
    with database.scope() as s:
        backup, (job,) = api.create_backup(s, DEMO, settings, volume_id=volume_id,
                                           now=utcnow(), **kw)
        return backup.id, job.id


def test_backup_create_succeeds_and_records_progress(settings, database, node):
    volume_id = _volume(settings, database, image=True)
    backup_id, job_id = _backup(settings, database, volume_id)
    seen = _statements(database)
    assert manager.run_job(settings, job_id, owner="w1") == "succeeded"
    statements = len(seen)
    with database.scope(write=False) as s:
        b = s.get(Backup, backup_id)
        assert b.status == "available" and b.object_count >= 1
        assert (b.container, b.service_metadata) == \
            (ChunkedDriver.default_container(backup_id), f"backup_{backup_id}")
        assert b.progress_bytes == b.progress_total == GiB
        assert b.progress_rate and b.progress_rate > 0  # the rate of the final report
        assert s.get(Volume, volume_id).status == "available"
        assert s.get(Job, job_id).state == "succeeded"
    assert statements <= 6 + FIRST_KEYS, seen

    # An incremental one: the parent is read with the backup and counts its dependent.
    incr_id, job_id = _backup(settings, database, volume_id, incremental=True)
    assert manager.run_job(settings, job_id, owner="w1") == "succeeded"
    with database.scope(write=False) as s:
        incr = s.get(Backup, incr_id)
        assert (incr.status, incr.parent_id) == ("available", backup_id)
        assert s.get(Backup, backup_id).num_dependent_backups == 1


def test_backup_create_fails_without_the_volume_image(settings, database, node):
    volume_id = _volume(settings, database, image=False)
    backup_id, job_id = _backup(settings, database, volume_id)
    seen = _statements(database)
    assert manager.run_job(settings, job_id, owner="w1") == "failed"
    statements = len(seen)
    with database.scope(write=False) as s:
        b = s.get(Backup, backup_id)
        assert b.status == "error" and "VolumeIOError" in b.fail_reason
        # A tenant reads no server path; the job keeps the whole detail for admins.
        assert settings.volume_path not in b.fail_reason, b.fail_reason
        assert f"volume-{volume_id}" in b.fail_reason
        # Where the objects would have gone is recorded before the data path starts.
        assert b.service_metadata == f"backup_{backup_id}"
        assert (b.progress_bytes, b.progress_total) == (0, GiB)
        assert s.get(Volume, volume_id).status == "available"
        job = s.get(Job, job_id)
        assert job.state == "failed" and "VolumeIOError" in job.error
        assert settings.volume_path in job.error
    assert statements <= 6 + FIRST_KEYS, seen
    # A second delivery of the same job finds it taken.
    assert manager.run_job(settings, job_id, owner="w1") == "skipped"


class _Sent:
    """A publisher that records what it was asked to send."""

    def __init__(self):
        self.ids: list[str] = []

    def send(self, job) -> None:
        self.ids.append(job.id)


@pytest.mark.parametrize("outcome", ["succeeded", "cancelled"])
def test_a_job_chained_while_running_is_queued_when_it_ends(settings, database, monkeypatch,
                                                             outcome):
    """What a force delete does to a running job: chain a job after it. Whether the job
    succeeds or is cancelled, the worker queues the chained one (finish hands it the
    row's next_job_id; nothing re-reads the job)."""
    sent = _Sent()
    chained: list[str] = []

    class ChainingRun(RunHalf):
        operation = "snapshot_create"

        def run(self, run, params):
            with database.scope() as s:
                then = jobs.create(s, "snapshot_delete", resource_id="s" * 36, host="h1",
                                   project_id="p", state="waiting", now=utcnow(),
                                   params=SnapshotParams(volume_id="v" * 36))
                s.execute(update(Job).where(Job.id == then.id)
                          .values(params={"volume_id": "v" * 36, "run_after_failure": True}))
                chained.append(then.id)
                s.execute(update(Job).where(Job.id == run.job.id)
                          .values(next_job_id=then.id,
                                  cancel_requested=outcome == "cancelled"))
            if outcome == "cancelled":
                raise JobCancelled("cancelled")
    monkeypatch.setitem(RUNNERS, "snapshot_create", ChainingRun())
    with database.scope() as s:
        job_id = jobs.create(s, "snapshot_create", resource_id="s" * 36, host="h1",
                             project_id="p", params=SnapshotParams(volume_id="v" * 36),
                             now=utcnow()).id
    assert manager.run_job(settings, job_id, owner="w1", publisher=sent) == outcome
    assert sent.ids == chained
    with database.scope(write=False) as s:
        assert s.get(Job, job_id).state == outcome
        assert s.get(Job, chained[0]).state == "queued"


@pytest.mark.parametrize("size", [1, 3])
def test_import_checks_the_records_size_against_the_manifest(settings, database, node, size):
    """A record whose size differs from the manifest's volume would let a restore grow a
    target past its recorded size (and past quota): the import fails instead."""
    import base64
    import json
    volume_id = _volume(settings, database, image=True)
    backup_id, job_id = _backup(settings, database, volume_id)
    assert manager.run_job(settings, job_id, owner="w1") == "succeeded"
    admin = RequestContext("admin", "admin", is_admin=True, roles=("admin",))
    with database.scope() as s:
        export = api.export_record(s, admin, settings, backup_id)
        s.execute(update(Backup).where(Backup.id == backup_id)
                  .values(deleted=True, status="deleted"))
    record = json.loads(base64.b64decode(export["backup_url"]))
    record["size"] = size
    export["backup_url"] = base64.b64encode(json.dumps(record).encode()).decode()
    with database.scope() as s:
        _, (job,) = api.import_record(s, admin, settings, now=utcnow(), **export)
    expected = "succeeded" if size == 1 else "failed"
    assert manager.run_job(settings, job.id, owner="w1") == expected
    with database.scope(write=False) as s:
        backup = s.get(Backup, backup_id)
        assert backup.status == ("available" if size == 1 else "error")
        if size != 1:
            assert "3 GiB" in backup.fail_reason and "1 GiB volume" in backup.fail_reason


def test_a_bug_in_a_run_half_shows_the_tenant_no_internals(settings, database, node,
                                                            monkeypatch):
    class Broken(RunHalf):
        operation = "backup_create"

        def run(self, run, params):
            raise KeyError("/srv/secret/config.ini line 3")
    monkeypatch.setitem(RUNNERS, "backup_create", Broken())
    volume_id = _volume(settings, database, image=True)
    backup_id, job_id = _backup(settings, database, volume_id)
    assert manager.run_job(settings, job_id, owner="w1") == "failed"
    with database.scope(write=False) as s:
        reason = s.get(Backup, backup_id).fail_reason
        assert "secret" not in reason and "internal error (KeyError)" in reason
        assert "/srv/secret/config.ini" in s.get(Job, job_id).error
        assert s.get(Volume, volume_id).status == "available"


def test_a_failing_prepare_ends_the_job_instead_of_requeueing_it(settings, database, node,
                                                                 monkeypatch):
    """A 202 must never turn into a job that goes back to queued forever: whatever fails in
    the claim's own step ends the job, its backup in error and its volume released."""
    class BadPrepare(RunHalf):
        operation = "backup_create"

        def prepare(self, session, job, params):
            raise ValueError("the store refuses this container")
    monkeypatch.setitem(RUNNERS, "backup_create", BadPrepare())
    volume_id = _volume(settings, database, image=True)
    backup_id, job_id = _backup(settings, database, volume_id)
    assert manager.run_job(settings, job_id, owner="w1") == "failed"
    assert manager.run_job(settings, job_id, owner="w1") == "skipped"
    with database.scope(write=False) as s:
        assert s.get(Job, job_id).state == "failed"
        backup = s.get(Backup, backup_id)
        assert backup.status == "error" and "refuses this container" in backup.fail_reason
        assert s.get(Volume, volume_id).status == "available"
