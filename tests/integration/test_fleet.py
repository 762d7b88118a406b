"""Routing by zone, liveness by heartbeat, duplicate delivery, Flower."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import requests
from orch_testlib import ROOT
from sqlalchemy import select

from orchestrator import errors
from orchestrator import hosts
from orchestrator.db import utcnow
from orchestrator.embedded import free_port
from orchestrator.models import Backup
from orchestrator.models import Job
from orchestrator.models import Volume


def test_backup_runs_in_the_volume_zone_and_dead_hosts_are_not_chosen(
        settings, db, client, start_worker):
    a = start_worker("host-a", "az-a")
    b = start_worker("host-b", "az-b")
    vol = client.create_volume(size=1, availability_zone="az-b")
    assert vol["availability_zone"] == "az-b"
    with db.scope(write=False) as s:
        assert s.get(Volume, vol["id"]).host == "host-b"

    r = client.post("/backups", {"backup": {"volume_id": vol["id"]}})
    assert r.status_code == 202, r.text
    backup_id = r.json()["backup"]["id"]
    assert client.wait("backup", backup_id, {"available", "error"})["status"] == "available"
    with db.scope(write=False) as s:
        assert s.get(Backup, backup_id).host == "host-b"
        job = s.scalar(select(Job).where(Job.resource_id == backup_id))
        assert (job.host, job.queue, job.lease_owner) == ("host-b", "backup.host-b",
                                                          "worker@host-b")
    assert backup_id in b.log and backup_id not in a.log

    # host-b stops beating (SIGKILL: no clean "stopped" mark). Once the down time has
    # passed it is never chosen again: zone az-b has no live host left → 503, nothing written.
    b.kill()
    time.sleep(settings.service_down_time + 1.0)
    with db.scope(write=False) as s:
        try:
            hosts.select_host(s, hosts.BACKUP_BINARY, now=utcnow(),
                              down_time=settings.service_down_time, az="az-b")
            raise AssertionError("a dead host was chosen")
        except errors.NoLiveHost:
            pass
        before = s.query(Backup).count()
    r = client.post("/backups", {"backup": {"volume_id": vol["id"]}})
    assert r.status_code == 503, r.text
    assert "serviceUnavailable" in r.json()
    with db.scope(write=False) as s:
        assert s.query(Backup).count() == before
        assert s.get(Volume, vol["id"]).status == "available"


def test_only_live_hosts_of_a_zone_are_picked(settings, db, start_worker):
    start_worker("host-a1", "az-a")
    a2 = start_worker("host-a2", "az-a")
    with db.scope(write=False) as s:
        picks = {hosts.select_host(s, hosts.BACKUP_BINARY, now=utcnow(),
                                   down_time=settings.service_down_time, az="az-a")
                 for _ in range(60)}
    assert picks == {"host-a1", "host-a2"}  # random choice among live hosts
    a2.kill()
    time.sleep(settings.service_down_time + 1.0)
    with db.scope(write=False) as s:
        picks = {hosts.select_host(s, hosts.BACKUP_BINARY, now=utcnow(),
                                   down_time=settings.service_down_time, az="az-a")
                 for _ in range(60)}
    assert picks == {"host-a1"}


def test_duplicate_delivery_runs_the_job_once(settings, db, client, start_worker):
    from orchestrator.dispatch import Publisher
    from orchestrator.tasks import make_celery
    node = start_worker("node-dup", "nova", concurrency=2)  # both copies can run at once
    vol = client.create_volume(size=1)
    r = client.post("/backups", {"backup": {"volume_id": vol["id"]}})
    backup_id = r.json()["backup"]["id"]
    with db.scope(write=False) as s:
        job = s.scalar(select(Job).where(Job.resource_id == backup_id))
    publisher = Publisher(make_celery(settings))
    publisher.send(job)  # the same message again: same task id = job id
    publisher.send(job)
    assert client.wait("backup", backup_id, {"available", "error"})["status"] == "available"
    deadline = time.monotonic() + 20
    while node.log.count(f"job {job.id} is not queued") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    log = node.log
    assert log.count(f"job {job.id} backup_create on {backup_id}: started") == 1
    assert log.count(f"job {job.id} is not queued") == 2
    with db.scope(write=False) as s:
        job = s.get(Job, job.id)
        assert (job.state, job.attempt) == ("succeeded", 1)


def test_flower_lists_the_running_worker(settings, start_worker):
    start_worker("node-flower", "nova")
    port = free_port()
    env = {**os.environ, **settings.as_env(), "FLOWER_UNAUTHENTICATED_API": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "orchestrator.celery_app",
                             "flower", "--address=127.0.0.1", f"--port={port}"],
                            cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        workers = {}
        while time.monotonic() < deadline:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/api/workers?refresh=1", timeout=10)
                if r.status_code == 200:
                    workers = r.json()
                    if "worker@node-flower" in workers:
                        break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        assert "worker@node-flower" in workers, workers
        queues = {q["name"] for q in workers["worker@node-flower"].get("active_queues", [])}
        assert {"backup.node-flower", "volume.node-flower"} <= queues
    finally:
        proc.terminate()
        proc.wait(20)
