"""Operable in production: request ids in the logs, health checks, metrics on API and worker.

Real parts throughout: the API over HTTP, `python -m workers` subprocesses on a
real Redis, SQLite files; the API under granian for the multiprocess metrics.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import uuid

import pytest
import requests
from orch_testlib import ApiProcess
from orch_testlib import ApiServer
from orch_testlib import Client
from orch_testlib import volume_file
from orch_testlib import wait_for
from orch_testlib import write_pattern
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from orchestrator.db import utcnow
from orchestrator.embedded import free_port
from orchestrator.models import Backup
from orchestrator.models import Job
from orchestrator.models import Volume

MiB = 1024 * 1024


def json_lines(text: str) -> list[dict]:
    """The log's JSON lines (anything else, such as a traceback of a crash, is not one)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of an exposition text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def backup_of(client: Client, volume_id: str, headers: dict | None = None) -> tuple[dict, str]:
    r = client.post("/backups", {"backup": {"volume_id": volume_id}}, headers=headers or {})
    assert r.status_code == 202, r.text
    backup = client.wait("backup", r.json()["backup"]["id"], {"available", "error"})
    return backup, r.headers["x-openstack-request-id"]


# ----------------------------------------------------------------------------- request ids


def test_a_request_id_follows_the_backup_into_every_worker_line(settings, db, client, worker):
    vol = client.create_volume(size=1)
    write_pattern(volume_file(settings, vol["id"]), 3, [(0, 2 * MiB)])
    rid = f"req-{uuid.uuid4()}"
    backup, answered = backup_of(client, vol["id"], {"X-OpenStack-Request-ID": rid})
    assert backup["status"] == "available", backup["fail_reason"]
    assert answered == rid  # a valid incoming id is used

    with db.scope(write=False) as s:
        job = s.scalars(select(Job).where(Job.resource_id == backup["id"],
                                          Job.op == "backup_create")).one()
    assert job.request_id == rid
    wait_for(lambda: f"job {job.id} backup_create: succeeded" in worker.log, timeout=10,
             what="the job's last line")
    lines = json_lines(worker.log)
    assert lines, worker.log[-2000:]
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    of_job = [line for line in lines if line.get("job_id") == job.id]
    # The manager's lines (started, the end) and the data path's, all with the request id.
    assert any("started" in line["message"] for line in of_job), of_job
    assert any(line["message"].endswith("succeeded") for line in of_job), of_job
    assert of_job and all(line.get("request_id") == rid for line in of_job), of_job
    # Celery's own line about the task, in the pool process, too.
    assert any(f"backup_create[{job.id}] succeeded" in line["message"] for line in of_job)
    # Lines that mention the job elsewhere in the worker are not about running it, and no
    # line of this job lost its request id.
    assert not [line for line in lines if line.get("request_id") == rid and
                line.get("job_id") not in (None, job.id)]


@pytest.mark.parametrize("bad", [
    "req-not-a-uuid", "REQ-" + str(uuid.uuid4()), f"req-{uuid.uuid4()}\r\nX-Evil: 1",
    f"req-{uuid.uuid4()}x", "<script>", "req-" + str(uuid.uuid4()).upper(), "",
])
def test_a_malformed_request_id_is_replaced_not_echoed(settings, client, bad):
    try:
        r = client.get("/backups", headers={"X-OpenStack-Request-ID": bad})
    except ValueError:  # requests refuses to send a header with a newline: nothing to check
        return
    assert r.status_code == 200
    rid = r.headers["x-openstack-request-id"]
    assert rid != bad and re.fullmatch(r"req-[0-9a-f-]{36}", rid)
    assert not bad or bad not in r.text


def test_jobs_made_by_a_job_inherit_its_request_id(settings, db, client, worker):
    """A restore to a new volume: the API makes the volume_create and the restore, chained;
    both carry the request's id."""
    vol = client.create_volume(size=1)
    backup, _ = backup_of(client, vol["id"])
    rid = f"req-{uuid.uuid4()}"
    r = client.post(f"/backups/{backup['id']}/restore", {"restore": {}},
                    headers={"X-OpenStack-Request-ID": rid})
    assert r.status_code == 202, r.text
    client.wait("volume", r.json()["restore"]["volume_id"], {"available", "error"})
    with db.scope(write=False) as s:
        ops = {j.op: j.request_id for j in s.scalars(select(Job).where(Job.request_id == rid))}
    assert ops.get("backup_restore") == rid, ops


# ----------------------------------------------------------------------------- health


def test_healthcheck_answers_anyone_and_details_only_for_admins(settings, api_server):
    url = api_server.url + "/healthcheck"
    r = requests.get(url, timeout=10)
    assert (r.status_code, r.text) == (200, "OK\n")
    assert "database" not in r.text
    r = requests.get(url, headers={"X-Auth-Token": "demo:demo"}, timeout=10)
    assert (r.status_code, r.text) == (200, "OK\n")  # a member sees no detail
    r = requests.get(url, headers={"X-Auth-Token": "admin:admin"}, timeout=10)
    assert r.status_code == 200
    doc = r.json()
    assert doc["status"] == "OK" and doc["checks"]["database"]["ok"] is True
    assert doc["checks"]["broker"]["ok"] is True


def test_healthcheck_is_503_when_the_broker_or_the_database_is_gone(settings):
    dead_broker = dataclasses.replace(settings, broker_url=f"redis://:hunter2@127.0.0.1:"
                                                            f"{free_port()}/0",
                                      health_timeout=1.0)
    server = ApiServer(dead_broker).start()
    try:
        r = requests.get(server.url + "/healthcheck", timeout=30)
        assert (r.status_code, r.text) == (503, "Service Unavailable\n")
        r = requests.get(server.url + "/healthcheck", headers={"X-Auth-Token": "admin:admin"},
                         timeout=30)
        assert r.status_code == 503
        doc = r.json()
        assert doc["checks"]["database"]["ok"] is True
        assert doc["checks"]["broker"]["ok"] is False and doc["checks"]["broker"]["error"]
        assert "hunter2" not in r.text
    finally:
        server.stop()
    # A PostgreSQL nobody listens for: the database check fails (the broker's passes).
    dead_db = dataclasses.replace(
        settings, database_url=f"postgresql+psycopg://orch:hunter2@127.0.0.1:{free_port()}/x"
                               "?connect_timeout=1", health_timeout=3.0)
    server = ApiServer(dead_db).start()
    try:
        r = requests.get(server.url + "/healthcheck", timeout=30)
        assert (r.status_code, r.text) == (503, "Service Unavailable\n")
        r = requests.get(server.url + "/healthcheck", headers={"X-Auth-Token": "admin:admin"},
                         timeout=30)
        doc = r.json()
        assert r.status_code == 503 and doc["checks"]["broker"]["ok"] is True
        assert doc["checks"]["database"]["ok"] is False and "hunter2" not in r.text
    finally:
        server.stop()


def test_worker_health_and_metrics_on_its_port(settings, db, client, worker):
    base = f"http://127.0.0.1:{worker.metrics_port}"
    r = requests.get(base + "/healthcheck", timeout=10)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["node"] == "worker@node-a" and doc["checks"]["ready"]["ok"] is True
    assert doc["checks"]["database"]["ok"] and doc["checks"]["broker"]["ok"]

    vol = client.create_volume(size=1)
    write_pattern(volume_file(settings, vol["id"]), 5, [(0, 3 * MiB)])
    backup, _ = backup_of(client, vol["id"])
    assert backup["status"] == "available"
    volume_file(settings, vol["id"]).unlink()
    failed, _ = backup_of(client, vol["id"])
    assert failed["status"] == "error"

    def scraped():
        got = samples(requests.get(base + "/metrics", timeout=10).text)
        key = ("orchestrator_worker_jobs_finished_total",
               (("operation", "backup_create"), ("result", "failed")))
        return got if got.get(key) == 1 else None
    got = wait_for(scraped, timeout=10, what="the failed backup in the worker's metrics")
    create = ("operation", "backup_create")
    assert got[("orchestrator_worker_jobs_finished_total",
                (create, ("result", "succeeded")))] == 1
    assert got[("orchestrator_worker_jobs_started_total", (create,))] == 2
    assert got[("orchestrator_worker_job_duration_seconds_count",
                (create, ("result", "succeeded")))] == 1
    assert got[("orchestrator_worker_job_bytes_total", (("direction", "read"), create))] \
        == 1024 * MiB
    assert 0 < got[("orchestrator_worker_job_bytes_total",
                    (("direction", "stored"), create))] < 1024 * MiB
    # The failed job's task is a FAILURE raised once, after the job ended: an expected
    # exception (one line, no traceback), not retried.
    with db.scope(write=False) as s:
        job = s.scalars(select(Job).where(Job.resource_id == failed["id"])).one()
    assert (job.state, job.attempt) == ("failed", 1)
    wait_for(lambda: f"backup_create[{job.id}] raised expected: JobFailed" in worker.log,
             timeout=10, what="Celery's line for the failed task")
    assert worker.log.count(f"backup_create[{job.id}] raised") == 1
    assert worker.log.count(f"backup_create[{job.id}] received") == 1
    assert "Traceback" not in worker.log
    # A volume_create ran too, and nothing names a volume, a backup or a project.
    text = requests.get(base + "/metrics", timeout=10).text
    for secret in (vol["id"], backup["id"], "demo"):
        assert secret not in text


# ----------------------------------------------------------------------------- API metrics


def test_api_metrics_sum_every_granian_worker_and_name_no_project(settings, worker):
    api = ApiProcess(settings, workers=3).wait_ready()
    try:
        client = Client(api.url)
        vol = client.create_volume(size=1)
        n = 30
        for _ in range(n):  # new connections: spread over the granian workers
            r = requests.get(f"{api.url}/v3/demo/volumes/{vol['id']}",
                             headers={"X-Auth-Token": "demo:demo"}, timeout=10)
            assert r.status_code == 200
        r = requests.get(f"{api.url}/v3/demo/volumes/{uuid.uuid4()}",
                         headers={"X-Auth-Token": "demo:demo"}, timeout=10)
        assert r.status_code == 404
        text = requests.get(api.url + "/metrics", timeout=10).text
        got = samples(text)
        route = ("route", "/v3/<project:project_id>/volumes/<volume_id>")
        assert got[("orchestrator_api_requests_total",
                    (("method", "GET"), route, ("status", "200")))] == n
        assert got[("orchestrator_api_requests_total",
                    (("method", "GET"), route, ("status", "404")))] == 1
        assert got[("orchestrator_api_request_duration_seconds_count",
                    (("method", "GET"), route, ("status", "200")))] == n
        # The state gauges, from SQL.
        assert got[("orchestrator_services", (("binary", "cinder-backup"), ("state", "up"),
                                              ("zone", "nova")))] == 1
        assert got[("orchestrator_state_up", (("source", "database"),))] == 1
        assert got[("orchestrator_state_up", (("source", "broker"),))] == 1
        assert ("orchestrator_queue_messages", (("queue", "backup.node-a"),)) in got
        assert vol["id"] not in text and "demo" not in text
        # The JSON access lines carry the request id the client was given.
        rid = r.headers["x-openstack-request-id"]
        wait_for(lambda: rid in api.log_path.read_text(), timeout=10, what="the access line")
        access = [line for line in json_lines(api.log_path.read_text())
                  if line.get("request_id") == rid]
        assert access and access[0]["status"] == 404 and access[0]["logger"] == \
            "orchestrator.access"
    finally:
        api.stop()


def test_state_gauges_count_stale_volumes_and_backups_by_status(settings, db, client, worker):
    fresh = client.create_volume(size=1)
    backup_of(client, fresh["id"])
    old = client.create_volume(size=1)  # never backed up
    stale_settings = dataclasses.replace(settings, backup_stale_after=3600)
    server = ApiServer(stale_settings).start()
    try:
        def gauges():
            return samples(requests.get(server.url + "/metrics", timeout=10).text)
        got = gauges()
        assert got[("orchestrator_volumes_without_recent_backup", ())] == 0  # both are new
        assert got[("orchestrator_backups", (("status", "available"),))] >= 1
        assert got[("orchestrator_backup_stale_after_seconds", ())] == 3600
        assert got[("orchestrator_newest_available_backup_age_seconds", ())] < 600
        two_hours_ago = utcnow() - dt.timedelta(hours=2)
        with db.scope() as s:  # both volumes two hours old: only the one never backed up
            for vid in (fresh["id"], old["id"]):
                s.get(Volume, vid).created_at = two_hours_ago
        assert gauges()[("orchestrator_volumes_without_recent_backup", ())] == 1
        with db.scope() as s:  # and the backup two hours old as well: both
            for b in s.scalars(select(Backup).where(Backup.volume_id == fresh["id"])):
                b.created_at = two_hours_ago
                b.data_timestamp = two_hours_ago
        got = gauges()
        assert got[("orchestrator_volumes_without_recent_backup", ())] == 2
        assert got[("orchestrator_newest_available_backup_age_seconds", ())] >= 7200
    finally:
        server.stop()
