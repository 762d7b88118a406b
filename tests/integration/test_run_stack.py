"""`orchestrator run` as a new user runs it: a process that dies is restarted while the
rest keeps serving, a job whose process dies ends within seconds, a second stack on the
same state directory is refused, and Ctrl-C leaves no job in a transient state."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from orch_testlib import Client
from orch_testlib import wait_for
from sqlalchemy import select

from orchestrator.db import get_database
from orchestrator.embedded import free_port
from orchestrator.models import Backup
from orchestrator.models import Job
from orchestrator.models import Volume

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VOLUME_MIB = 192  # random data, zlib: a few seconds of backup on this machine


class Stack:
    def __init__(self, state: Path, port: int):
        self.state, self.port = state, port
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env.update({"ORCH_STATE_DIR": str(state), "ORCH_API_PORT": str(port),
                    "ORCH_BACKUP_COMPRESSION": "zlib", "ORCH_HEARTBEAT_INTERVAL": "1",
                    "ORCH_API_WORKERS": "1", "ORCH_WORKER_METRICS_PORT": str(free_port())})
        self.env = env
        self.out = state.parent / f"run-{port}.out"
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run",
                                          "--host", "stacknode"], cwd=str(ROOT), env=env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.client = Client(f"http://127.0.0.1:{port}")
        self.admin = Client(f"http://127.0.0.1:{port}", token="admin:admin")

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def pid(self, name: str) -> int:
        return int(re.findall(rf"^  {name} .*pid (\d+)$", self.text(), re.M)[-1])

    def restarted_pid(self, name: str) -> int:
        # A line of the supervisor's log (JSON or text): "<name> restarted (pid N)".
        return int(re.findall(rf"\b{name} restarted \(pid (\d+)\)", self.text())[-1])

    def ready(self) -> bool:
        try:
            r = self.admin.get("/os-services")
        except requests.ConnectionError:
            return False
        up = [s for s in r.json().get("services", []) if s["state"] == "up"] \
            if r.status_code == 200 else []
        return {s["binary"] for s in up} >= {"cinder-backup", "cinder-volume"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", str(self.state)], check=False)


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path / "state", free_port())
    try:
        wait_for(s.ready, 90, 0.2, "the stack to serve with a live node")
        yield s
    finally:
        s.stop()


def _backup_in_flight(stack) -> tuple[str, str]:
    c = stack.client
    vol = c.create_volume(1)
    assert vol["status"] == "available", vol
    path = stack.state / "volumes" / f"volume-{vol['id']}"
    with open(path, "r+b") as f:
        for _ in range(VOLUME_MIB // 16):
            f.write(os.urandom(16 << 20))
    r = c.post("/backups", {"backup": {"volume_id": vol["id"], "name": "big"}})
    assert r.status_code == 202, r.text
    backup_id = r.json()["backup"]["id"]
    wait_for(lambda: (c.get(f"/backups/{backup_id}").json()["backup"].get("progress") or
                      {}).get("bytes_done", 0) > 0 or
             c.get(f"/backups/{backup_id}").json()["backup"]["status"] != "creating",
             60, 0.05, "the backup to start writing")
    assert c.get(f"/backups/{backup_id}").json()["backup"]["status"] == "creating"
    return vol["id"], backup_id


def _ended(stack, backup_id: str, volume_id: str, within: float) -> dict:
    c = stack.client
    start = time.monotonic()
    backup = c.wait("backup", backup_id, {"error", "available"}, timeout=within)
    elapsed = time.monotonic() - start
    print(f"backup {backup_id} ended {elapsed:.1f} s after the kill")
    assert backup["status"] == "error", backup
    assert c.wait("volume", volume_id, {"available"}, timeout=5)["status"] == "available"
    quota = stack.admin.get(
        "/os-quota-sets/demo?usage=true").json()["quota_set"]
    assert quota["backups"]["in_use"] == len(
        c.get("/backups").json()["backups"]), quota
    prefix = next((stack.state / "backups").rglob(f"backup_{backup_id}"), None)
    assert prefix is None or not any(p.is_file() for p in prefix.rglob("*")), \
        f"partial objects left: {list(prefix.rglob('*'))}"
    return {"seconds": elapsed, "backup": backup}


def test_killing_the_storage_worker_ends_the_backup_and_the_api_keeps_answering(stack):
    volume_id, backup_id = _backup_in_flight(stack)
    os.kill(stack.pid("worker"), signal.SIGKILL)
    assert stack.client.get("/backups").status_code == 200  # the API is still serving
    result = _ended(stack, backup_id, volume_id, within=15)
    assert "restarted" in result["backup"]["fail_reason"], result
    wait_for(lambda: "worker restarted" in stack.text(), 30, 0.2, "the worker's restart")
    wait_for(stack.ready, 60, 0.2, "the restarted node to beat")
    # The restarted worker runs the next backup.
    vol = stack.client.create_volume(1)
    r = stack.client.post("/backups", {"backup": {"volume_id": vol["id"]}})
    assert stack.client.wait("backup", r.json()["backup"]["id"], {"available", "error"},
                             timeout=60)["status"] == "available"


def test_killing_the_jobs_pool_process_ends_the_backup_at_once(stack):
    volume_id, backup_id = _backup_in_flight(stack)
    worker = stack.pid("worker")
    children = subprocess.run(["pgrep", "-P", str(worker)], capture_output=True,
                              text=True).stdout.split()
    assert children, "the worker has no pool processes"
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    result = _ended(stack, backup_id, volume_id, within=15)
    assert "died" in result["backup"]["fail_reason"], result
    assert os.path.exists(f"/proc/{worker}")  # the worker itself goes on


def test_the_stack_serves_metrics_and_health_and_logs_json(stack):
    """The API's /metrics and /healthcheck on its port, the worker's on
    ORCH_WORKER_METRICS_PORT; every process's log lines are JSON."""
    api = f"http://127.0.0.1:{stack.port}"
    node = f"http://127.0.0.1:{stack.env['ORCH_WORKER_METRICS_PORT']}"
    r = requests.get(api + "/healthcheck", timeout=10)
    assert (r.status_code, r.text) == (200, "OK\n")
    assert "orchestrator_services" in requests.get(api + "/metrics", timeout=10).text
    r = requests.get(node + "/healthcheck", timeout=10)
    assert r.status_code == 200 and r.json()["node"] == "worker@stacknode"
    assert "orchestrator_worker_jobs_in_flight" in requests.get(node + "/metrics",
                                                                timeout=10).text
    logs = stack.state / "logs"
    for name in ("api", "worker", "maintenance"):
        lines = [line for line in (logs / f"{name}.log").read_text().splitlines()
                 if line.startswith("{")]
        assert lines, name
        assert all(json.loads(line)["level"] for line in lines)


def test_a_second_stack_on_the_same_state_directory_is_refused(stack, tmp_path):
    done = subprocess.run([sys.executable, "-m", "orchestrator", "run"], cwd=str(ROOT),
                          env={**stack.env, "ORCH_API_PORT": str(free_port())},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "another stack" in done.stderr and str(stack.state) in done.stderr, done.stderr
    assert stack.ready()  # the first one is untouched: socket, port and node
    vol = stack.client.create_volume(1)
    assert vol["status"] == "available"


def test_ctrl_c_during_a_backup_leaves_no_job_in_a_transient_state(stack):
    volume_id, backup_id = _backup_in_flight(stack)
    os.killpg(stack.proc.pid, signal.SIGINT)
    stack.proc.wait(60)
    assert "Traceback" not in stack.text()
    # The rows as the stopped stack left them (nothing restarted has touched them).
    db = get_database(f"sqlite:///{stack.state / 'orchestrator.db'}")
    with db.scope(write=False) as s:
        assert s.get(Backup, backup_id).status == "error"
        assert s.get(Volume, volume_id).status == "available"
        states = {j.state for j in s.scalars(select(Job))}
        assert states <= {"succeeded", "failed", "cancelled"}, states
    prefix = next((stack.state / "backups").rglob(f"backup_{backup_id}"), None)
    assert prefix is None or not any(p.is_file() for p in prefix.rglob("*"))
