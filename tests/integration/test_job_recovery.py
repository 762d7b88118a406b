"""Jobs are recovered without depending on a dead host: restart cleanup, re-send, re-route."""
from __future__ import annotations

import time

from orch_testlib import fill_random
from orch_testlib import volume_file
from orch_testlib import wait_for
from sqlalchemy import select
from sqlalchemy import update

from orchestrator import api
from orchestrator.context import RequestContext
from orchestrator.db import utcnow
from orchestrator.models import Backup
from orchestrator.models import Job

GiB = 1024 ** 3
DEMO = RequestContext("demo", "demo")


def test_restarted_worker_fails_what_it_left_running(settings, db, client, start_worker):
    node = start_worker("phoenix", "nova")
    vol = client.create_volume(size=1)
    fill_random(volume_file(settings, vol["id"]), GiB)
    backup_id = client.post("/backups", {"backup": {"volume_id": vol["id"]}}).json()[
        "backup"]["id"]

    def writing():
        with db.scope(write=False) as s:
            return (s.get(Backup, backup_id).progress_bytes or 0) > 0
    wait_for(writing, timeout=30, interval=0.01, what="the backup to be writing")
    node.kill()
    # No maintenance worker here: the restarted node itself ends the job at start,
    # long before its lease would have expired.
    t0 = time.monotonic()
    start_worker("phoenix", "nova")
    backup = client.wait("backup", backup_id, {"error", "available"}, timeout=30)
    assert backup["status"] == "error"
    assert "restarted" in backup["fail_reason"]
    assert time.monotonic() - t0 < settings.lease_ttl + 10
    assert client.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "available"


def test_committed_but_never_sent_job_is_delivered(settings, db, client, worker, control_plane):
    vol = client.create_volume(size=1)
    with db.scope() as s:  # the API "crashed" between commit and publish
        backup, _jobs = api.create_backup(s, DEMO, settings, volume_id=vol["id"], now=utcnow())
    backup = client.wait("backup", backup.id, {"available", "error"},
                         timeout=settings.dispatch_resend_after + settings.reaper_interval + 20)
    assert backup["status"] == "available"
    assert "resent" in control_plane.log or "reaper" in control_plane.log


def test_job_queued_for_a_dead_host_is_rerouted(settings, db, client, start_worker,
                                               control_plane):
    dead = start_worker("gone", "nova")
    start_worker("alive", "nova")
    vol = client.create_volume(size=1)
    dead.kill()
    time.sleep(settings.service_down_time + 0.5)
    with db.scope() as s:  # a job that went to the dead node's queue just before it died
        backup, jobs = api.create_backup(s, DEMO, settings, volume_id=vol["id"], now=utcnow())
        s.execute(update(Job).where(Job.id == jobs[0].id).values(host="gone",
                                                                queue="backup.gone"))
    backup = client.wait("backup", backup.id, {"available", "error"},
                         timeout=settings.dispatch_resend_after + settings.reaper_interval + 20)
    assert backup["status"] == "available"
    with db.scope(write=False) as s:
        job = s.scalar(select(Job).where(Job.resource_id == backup["id"]))
        assert job.host == "alive" and job.lease_owner == "worker@alive"
