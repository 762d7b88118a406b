"""Two requests on one backup at the same moment, on PostgreSQL: the second waits for the
first's row locks and then sees what it did (each test interleaves two real transactions
deterministically: the first holds its locks until the second is seen waiting)."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select
from sqlalchemy import text

from orchestrator import api
from orchestrator import errors
from orchestrator import jobs
from orchestrator.config import Settings
from orchestrator.context import RequestContext
from orchestrator.db import utcnow
from orchestrator.migrate import upgrade
from orchestrator.models import Backup
from orchestrator.models import Job
from orchestrator.models import Volume
from orchestrator.operations.backups import BackupCreate
from orchestrator.operations.backups import BackupCreateOutcome
from orchestrator.operations.backups import BackupCreateParams

DEMO = RequestContext("demo", "demo")
ADMIN = RequestContext("admin", "admin", is_admin=True, roles=("admin",))


@pytest.fixture
def settings(tmp_path, postgres):
    s = Settings(state_dir=str(tmp_path), broker_url="memory://", database_url=postgres.url)
    upgrade(s.database_url)
    return s


def _volume(database) -> str:
    with database.scope() as s:
        vol = Volume(project_id="demo", user_id="demo", host="node1", availability_zone="nova",
                     size=1, status="available", display_name="v", created_at=utcnow())
        s.add(vol)
        s.flush()
        return vol.id


def _available_backup(database, settings, volume_id: str) -> str:
    """A full backup of the volume, created through the API and completed as a worker would."""
    with database.scope() as s:
        backup, (job,) = api.create_backup(s, DEMO, settings, volume_id=volume_id, now=utcnow())
    _complete_create(database, job.id)
    return backup.id


def _complete_create(database, job_id: str) -> None:
    with database.scope() as s:
        job = jobs.claim(s, job_id, "w1", now=utcnow(), ttl=60)
    with database.scope() as s:
        assert jobs.finish(s, job, "succeeded", now=utcnow(), owner="w1")
        BackupCreate().complete(s, job, BackupCreate().params(job), BackupCreateOutcome(
            container="c", prefix=f"backup_{job.resource_id}", object_count=1, stored_bytes=1,
            logical_bytes=1, incremental=True), now=utcnow())


def _waiting_for_lock(database) -> bool:
    with database.scope(write=False) as s:
        return bool(s.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()")).scalar())


def _second(fn) -> tuple[threading.Thread, dict]:
    """Run ``fn`` in a thread (its own transaction); what it returned or raised lands in
    the dict."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as exc:  # the assertion is on what was raised
            out["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _hold_until_waited_on(database, first_session, thread) -> None:
    """Keep the first transaction open until the second waits on its locks, then commit."""
    deadline = time.monotonic() + 10
    while not _waiting_for_lock(database) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _waiting_for_lock(database), "the second request never waited for the first"
    first_session.commit()
    first_session.close()
    thread.join(20)
    assert not thread.is_alive()


def test_incremental_first_then_parent_delete_sees_the_child(settings, database):
    volume_id = _volume(database)
    parent_id = _available_backup(database, settings, volume_id)
    first = database.session(write=True)
    incremental, _ = api.create_backup(first, DEMO, settings, volume_id=volume_id,
                                       incremental=True, now=utcnow())

    def delete_parent():
        with database.scope() as s:
            return api.delete_backup(s, DEMO, settings, parent_id, now=utcnow())
    thread, out = _second(delete_parent)
    _hold_until_waited_on(database, first, thread)
    assert isinstance(out.get("error"), errors.InvalidBackup), out
    assert "Incremental backups exist" in str(out["error"])
    with database.scope(write=False) as s:
        assert s.get(Backup, parent_id).status == "available"
        assert s.get(Backup, incremental.id).parent_id == parent_id


def test_parent_delete_first_then_incremental_is_refused(settings, database):
    volume_id = _volume(database)
    parent_id = _available_backup(database, settings, volume_id)
    first = database.session(write=True)
    api.delete_backup(first, DEMO, settings, parent_id, now=utcnow())

    def incremental():
        with database.scope() as s:
            return api.create_backup(s, DEMO, settings, volume_id=volume_id, incremental=True,
                                     now=utcnow())
    thread, out = _second(incremental)
    _hold_until_waited_on(database, first, thread)
    assert isinstance(out.get("error"), errors.InvalidBackup), out
    with database.scope(write=False) as s:
        assert s.get(Backup, parent_id).status == "deleting"
        assert s.scalar(select(Backup.id).where(Backup.parent_id == parent_id)) is None
        assert s.get(Volume, volume_id).status == "available"


def test_force_delete_while_the_worker_completes_does_not_deadlock(settings, database):
    """The worker locks the job, then the backup; a force delete must take them in the
    same order (it locked the backup first: PostgreSQL found a deadlock, answered 500)."""
    volume_id = _volume(database)
    with database.scope() as s:
        backup, (job,) = api.create_backup(s, DEMO, settings, volume_id=volume_id, now=utcnow())
    with database.scope() as s:
        job = jobs.claim(s, job.id, "w1", now=utcnow(), ttl=60)
    worker = database.session(write=True)
    assert jobs.finish(worker, job, "succeeded", now=utcnow(), owner="w1")  # job locked

    def force_delete():
        with database.scope() as s:
            return api.force_delete_backup(s, ADMIN, settings, backup.id, now=utcnow())
    thread, out = _second(force_delete)
    deadline = time.monotonic() + 10
    while not _waiting_for_lock(database) and time.monotonic() < deadline:
        time.sleep(0.02)
    # The worker goes on to the backup row while the force delete waits.
    BackupCreate().complete(worker, job, BackupCreateParams(volume_id=volume_id),
                            BackupCreateOutcome(container="c", prefix="p", object_count=1,
                                                stored_bytes=1, logical_bytes=1,
                                                incremental=False), now=utcnow())
    _hold_until_waited_on(database, worker, thread)
    assert "error" not in out, out
    with database.scope(write=False) as s:
        assert s.get(Backup, backup.id).status == "deleting"
        states = {j.op: j.state for j in s.scalars(select(Job).where(
            Job.resource_id == backup.id))}
        assert states == {"backup_create": "succeeded", "backup_delete": "queued"}


def _exported(database, settings) -> tuple[str, dict]:
    volume_id = _volume(database)
    backup_id = _available_backup(database, settings, volume_id)
    with database.scope() as s:
        return backup_id, api.export_record(s, ADMIN, settings, backup_id)


def _import_at_once(database, settings, export: dict, n: int = 8) -> list:
    barrier = threading.Barrier(n)

    def one():
        barrier.wait()
        with database.scope() as s:
            backup, _ = api.import_record(s, ADMIN, settings, now=utcnow(), **export)
            return backup.id
    threads = [_second(one) for _ in range(n)]
    for thread, _ in threads:
        thread.join(30)
    return [out.get("value", out.get("error")) for _, out in threads]


@pytest.mark.parametrize("record_of", ["a new id", "a deleted backup"])
def test_concurrent_imports_of_one_record_import_it_once(settings, database, record_of):
    backup_id, export = _exported(database, settings)
    with database.scope() as s:
        if record_of == "a new id":  # as a second deployment sees it: no such row at all
            s.execute(text("DELETE FROM jobs"))
            s.execute(text("DELETE FROM backups WHERE id = :id"), {"id": backup_id})
        else:
            s.execute(text("UPDATE backups SET deleted = true, status = 'deleted' "
                           "WHERE id = :id"), {"id": backup_id})
        s.execute(text("UPDATE quota_usages SET in_use = 0 WHERE project_id = 'admin'"))
    results = _import_at_once(database, settings, export)
    assert results.count(backup_id) == 1, results
    refused = [r for r in results if r != backup_id]
    assert len(refused) == 7 and all(isinstance(r, errors.InvalidBackup) and
                                     "already exists" in str(r) for r in refused), refused
    with database.scope(write=False) as s:
        assert s.scalar(text("SELECT in_use FROM quota_usages WHERE project_id = 'admin' "
                             "AND resource = 'backups'")) == 1
        assert s.scalar(text("SELECT count(*) FROM jobs WHERE op = 'backup_import'")) == 1
        revived = s.get(Backup, backup_id)
        assert (revived.status, revived.service_metadata, revived.service) == \
            ("creating", None, None)


def test_first_use_charge_that_meets_a_concurrent_first_use_is_not_refused(settings, database,
                                                                         monkeypatch):
    """Two first creates of a project: the second's UPDATE finds no usage row, then the
    first commits the row before the second looks again. The second was answered 413 on
    backup_gigabytes with room to spare (seen in the 50-create race on PostgreSQL)."""
    from orchestrator import quota
    from orchestrator.persistence import quota as quota_rows
    first = database.session(write=True)
    quota.charge(first, "fresh", {"backup_gigabytes": 1, "backups": 1}, settings,
                 now=utcnow())
    real = quota_rows.consumed
    calls = {"n": 0}

    def consumed_after_the_first_commits(session, project_id, resource):
        calls["n"] += 1
        if calls["n"] == 1:
            first.commit()  # between the second's UPDATE and its look at the row
            first.close()
        return real(session, project_id, resource)
    monkeypatch.setattr(quota_rows, "consumed", consumed_after_the_first_commits)
    with database.scope() as s:
        quota.charge(s, "fresh", {"backup_gigabytes": 1, "backups": 1}, settings,
                     now=utcnow())
    with database.scope(write=False) as s:
        assert quota.usage(s, "fresh")["backup_gigabytes"] == (2, 0)
        assert quota.usage(s, "fresh")["backups"] == (2, 0)
