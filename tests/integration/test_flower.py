"""An honest Flower: tasks named by operation, a failed job a FAILURE with its reason, the
request id in the task's arguments, and the HTTP API closed to anonymous callers.

Real Flower (`orchestrator flower`) against a real worker on a real Redis.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import requests
from orch_testlib import ROOT
from orch_testlib import volume_file
from orch_testlib import wait_for

from orchestrator.embedded import free_port


class Flower:
    def __init__(self, settings, log_path, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
        full.update(settings.as_env())
        full.update(env)
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "flower", "--port", str(self.port)],
            cwd=str(ROOT), env=full, stdout=open(log_path, "ab"),  # noqa: SIM115 (the child keeps it)
            stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_up(self, auth=None) -> Flower:
        def up():
            if self.proc.poll() is not None:
                raise AssertionError(self.log_path.read_text()[-3000:])
            try:
                return requests.get(self.url + "/healthcheck", auth=auth, timeout=5).ok
            except requests.ConnectionError:
                return False
        wait_for(up, timeout=60, interval=0.3, what="Flower to answer")
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)


def test_flower_names_tasks_by_operation_and_shows_a_failed_backup_as_failure(
        settings, client, start_worker, tmp_path):
    auth = ("ops", "s3cret-pw")
    flower = Flower(settings, tmp_path / "flower.log",
                    ORCH_FLOWER_BASIC_AUTH=f"{auth[0]}:{auth[1]}").wait_up(auth)
    try:
        start_worker("node-flower", "nova")
        wait_for(lambda: "worker@node-flower" in requests.get(
            flower.url + "/api/workers?refresh=1", auth=auth, timeout=10).json(),
            timeout=60, interval=0.5, what="Flower to see the worker")

        vol = client.create_volume(size=1)
        ok_rid = f"req-{uuid.uuid4()}"
        r = client.post("/backups", {"backup": {"volume_id": vol["id"]}},
                        headers={"X-OpenStack-Request-ID": ok_rid})
        good = client.wait("backup", r.json()["backup"]["id"], {"available", "error"})
        assert good["status"] == "available", good["fail_reason"]
        volume_file(settings, vol["id"]).unlink()  # the next backup cannot read its source
        r = client.post("/backups", {"backup": {"volume_id": vol["id"]}})
        bad = client.wait("backup", r.json()["backup"]["id"], {"available", "error"})
        assert bad["status"] == "error" and bad["fail_reason"]

        def tasks():
            got = requests.get(flower.url + "/api/tasks", auth=auth, timeout=10).json()
            states = {(t["name"], t["state"]) for t in got.values()}
            if {("backup_create", "SUCCESS"), ("backup_create", "FAILURE")} <= states:
                return got
            return None
        got = wait_for(tasks, timeout=30, interval=0.5, what="both backups in Flower")
        names = {t["name"] for t in got.values()}
        assert {"volume_create", "backup_create"} <= names
        assert "orchestrator.tasks.run_job" not in names
        failed = [t for t in got.values() if t["state"] == "FAILURE"]
        assert len(failed) == 1 and failed[0]["name"] == "backup_create"
        assert "JobFailed" in failed[0]["exception"]
        assert bad["fail_reason"] in failed[0]["exception"]
        succeeded = [t for t in got.values()
                     if t["name"] == "backup_create" and t["state"] == "SUCCESS"]
        assert ok_rid in succeeded[0]["kwargs"]  # the request id, in the task's arguments

        # Without credentials: refused, the UI and the API alike.
        assert requests.get(flower.url + "/api/tasks", timeout=10).status_code == 401
        assert requests.get(flower.url + "/api/workers", timeout=10).status_code == 401
        # A shutdown through the API needs the credentials too.
        r = requests.post(flower.url + "/api/worker/shutdown/worker@node-flower", timeout=10)
        assert r.status_code == 401
    finally:
        flower.stop()


def test_flower_api_is_closed_without_authentication_by_default(settings, tmp_path):
    flower = Flower(settings, tmp_path / "flower-open.log").wait_up()
    try:
        r = requests.get(flower.url + "/api/workers", timeout=10)
        assert r.status_code == 401 and "FLOWER_UNAUTHENTICATED_API" in r.text
        r = requests.post(flower.url + "/api/task/revoke/" + str(uuid.uuid4()), timeout=10)
        assert r.status_code == 401
    finally:
        flower.stop()
