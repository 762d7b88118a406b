"""The API as operators run it: `orchestrator api` (granian) with the settings' process model."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import requests
from orch_testlib import ApiProcess

from orchestrator.serve import GRACEFUL_S


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_workers_threads_keepalive_respawn_access_log_and_graceful_stop(settings):
    served = dataclasses.replace(settings, api_threads=2, api_keepalive=False)
    api = ApiProcess(served, workers=3).wait_ready()
    try:
        workers = _wait_for(lambda: len(_children(api.proc.pid)) == 3
                            and _children(api.proc.pid))

        headers = {"X-Auth-Token": "demo:demo"}
        r = requests.get(api.url + "/v3/backups", headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["Connection"].lower() == "close"  # ORCH_API_KEEPALIVE=false
        assert r.headers["x-openstack-request-id"].startswith("req-")
        # The access line (JSON, written by the application with the request id): wait for
        # it before a worker is killed (a SIGKILLed worker takes its unwritten lines along).
        rid = r.headers["x-openstack-request-id"]

        def access_line():
            for line in api.log_path.read_text().splitlines():
                if line.startswith("{") and rid in line:
                    return json.loads(line)
            return None
        line = _wait_for(access_line)
        assert (line["logger"], line["method"], line["path"], line["status"]) == (
            "orchestrator.access", "GET", "/v3/backups", 200)

        # A worker that dies is replaced, and the API answers again once it is.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = _wait_for(lambda: (len(_children(api.proc.pid)) == 3
                                      and victim not in _children(api.proc.pid)
                                      and _children(api.proc.pid)))
        assert replaced - workers
        # While the replacement boots a connection may be refused (granian): wait for ten
        # answers in a row.
        streak = [0]

        def answers():
            try:
                ok = requests.get(api.url + "/v3/", headers=headers, timeout=10).status_code
            except requests.ConnectionError:
                streak[0] = 0
                return False
            assert ok == 200
            streak[0] += 1
            return streak[0] >= 10
        _wait_for(answers)

    finally:
        started = time.monotonic()
        api.stop()
    assert api.proc.returncode == 0
    # Every process ends: gracefully, or (a worker still booting when SIGTERM came, as the
    # replacement may be here) killed after the graceful timeout.
    assert time.monotonic() - started < GRACEFUL_S + 5
    assert not any(_alive(pid) for pid in workers | replaced)
