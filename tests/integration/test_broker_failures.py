"""Jobs end on every failure path, on Redis and (when present) RabbitMQ.

Worker SIGKILL mid-backup, broker down at create time, broker restarted while a
job runs, and a duplicate delivery of the same job message.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from orch_testlib import fill_random
from orch_testlib import volume_file
from orch_testlib import wait_for
from sqlalchemy import select

from orchestrator import quota
from orchestrator.db import utcnow
from orchestrator.models import Backup
from orchestrator.models import Job
from orchestrator.models import Reservation
from orchestrator.models import Volume

GiB = 1024 ** 3


@pytest.fixture
def settings(broker_settings):
    """Every fixture of this module uses the test's own stoppable broker."""
    return broker_settings


def _job_of(db, backup_id: str, op: str = "backup_create") -> Job | None:
    with db.scope(write=False) as s:
        return s.scalar(select(Job).where(Job.resource_id == backup_id, Job.op == op)
                        .order_by(Job.created_at.desc()))


def _store_files(settings, container: str) -> list[Path]:
    root = Path(settings.backup_path) / container
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_worker_killed_mid_backup_ends_in_error(settings, db, client, start_worker,
                                                control_plane, broker):
    uid = str(time.monotonic_ns())[-6:]
    victim = start_worker(f"victim-{uid}", "nova")
    vol = client.create_volume(size=1)
    fill_random(volume_file(settings, vol["id"]), GiB)
    r = client.post("/backups", {"backup": {"volume_id": vol["id"], "name": "doomed"}})
    assert r.status_code == 202, r.text
    backup_id = r.json()["backup"]["id"]

    def writing():
        with db.scope(write=False) as s:
            return (s.get(Backup, backup_id).progress_bytes or 0) > 0
    wait_for(writing, timeout=30, interval=0.01, what="the backup to be writing")
    victim.kill()  # SIGKILL the worker and its prefork child, mid-way
    killed_at = time.monotonic()

    backup = client.wait("backup", backup_id, {"error", "available"},
                         timeout=settings.lease_ttl + settings.reaper_interval + 30)
    elapsed = time.monotonic() - killed_at
    assert backup["status"] == "error"
    assert "stopped renewing the lease" in backup["fail_reason"]
    assert elapsed <= settings.lease_ttl + settings.reaper_interval + 5, elapsed
    assert client.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "available"
    with db.scope(write=False) as s:
        assert quota.usage(s, "demo")["backups"] == (1, 0)  # an error backup still counts
        assert quota.reconcile(s, now=utcnow()) == []
        container = s.get(Backup, backup_id).container
    assert container and _store_files(settings, container), "the backup had written objects"

    # Another live host deletes the failed backup: nothing it wrote may be left behind.
    start_worker(f"rescuer-{uid}", "nova")
    assert client.delete(f"/backups/{backup_id}").status_code == 202
    client.wait("backup", backup_id, {"deleted"}, timeout=60)
    assert _store_files(settings, container) == []
    with db.scope(write=False) as s:
        assert quota.usage(s, "demo")["backups"] == (0, 0)


def test_broker_down_at_create_answers_503_and_writes_nothing(settings, db, client,
                                                              start_worker, broker):
    start_worker(f"n-{str(time.monotonic_ns())[-6:]}", "nova")
    vol = client.create_volume(size=1)
    with db.scope(write=False) as s:
        usage_before = quota.usage(s, "demo")
    broker.stop()
    try:
        t0 = time.monotonic()
        r = client.post("/backups", {"backup": {"volume_id": vol["id"]}})
        assert r.status_code == 503, r.text
        assert "serviceUnavailable" in r.json()
        assert time.monotonic() - t0 < 20
        with db.scope(write=False) as s:
            assert s.scalars(select(Backup)).all() == []
            assert s.scalars(select(Reservation)).all() == []
            assert s.get(Volume, vol["id"]).status == "available"
            assert quota.usage(s, "demo") == usage_before
    finally:
        broker.start()
    # Once the broker is back, the same request works.
    r = wait_for(lambda: (x := client.post("/backups", {"backup": {"volume_id": vol["id"]}}))
                 .status_code == 202 and x, timeout=30, interval=0.5, what="broker recovery")
    backup = client.wait("backup", r.json()["backup"]["id"], {"available", "error"}, timeout=90)
    assert backup["status"] == "available"


def test_broker_restart_while_a_job_runs_never_leaves_it_stuck(settings, db, client,
                                                              start_worker, control_plane,
                                                              broker):
    start_worker(f"n-{str(time.monotonic_ns())[-6:]}", "nova")
    vol = client.create_volume(size=1)
    fill_random(volume_file(settings, vol["id"]), GiB)
    backup_id = client.post("/backups", {"backup": {"volume_id": vol["id"]}}).json()[
        "backup"]["id"]
    wait_for(lambda: (j := _job_of(db, backup_id)) is not None and j.state == "running",
             timeout=30, interval=0.01, what="the backup to start")
    broker.stop()
    time.sleep(1.0)
    broker.start()
    backup = client.wait("backup", backup_id, {"available", "error"}, timeout=120)
    assert backup["status"] in ("available", "error")
    job = _job_of(db, backup_id)
    assert job.state in ("succeeded", "failed")
    assert client.wait("volume", vol["id"], {"available"}, timeout=30)["status"] == "available"


def test_same_message_twice_runs_once(settings, db, client, start_worker, broker):
    from orchestrator.dispatch import Publisher
    from orchestrator.tasks import make_celery
    node = start_worker(f"dup-{str(time.monotonic_ns())[-6:]}", "nova", concurrency=2)
    vol = client.create_volume(size=1)
    backup_id = client.post("/backups", {"backup": {"volume_id": vol["id"]}}).json()[
        "backup"]["id"]
    job = _job_of(db, backup_id)
    Publisher(make_celery(settings)).send(job)
    assert client.wait("backup", backup_id, {"available", "error"})["status"] == "available"
    wait_for(lambda: f"job {job.id} is not queued" in node.log, timeout=20,
             what="the duplicate to be skipped")
    assert node.log.count(f"job {job.id} backup_create on {backup_id}: started") == 1
    assert _job_of(db, backup_id).attempt == 1
