"""The first hour of a new operator: what the start banner, --help and the logs say."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from orch_testlib import ROOT

from orchestrator.cli import try_it
from orchestrator.config import Settings
from orchestrator.embedded import free_port


def _env(state: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "OS_"))}
    env.update({"ORCH_STATE_DIR": str(state), **extra})
    return env


def _wait_text(path: Path, needle: str, proc: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{text[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in {path}:\n{text[-3000:]}")


def _stop(proc: subprocess.Popen, sig=signal.SIGINT) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_banner_steps_work_in_the_auth_mode(tmp_path):
    endpoint = "http://127.0.0.1:8776/v3"
    noauth = try_it(Settings(state_dir=str(tmp_path)), endpoint)
    token = try_it(Settings(state_dir=str(tmp_path), auth="token"), endpoint)
    assert "OS_AUTH_TYPE=noauth" in noauth
    # In token mode noauth credentials get 401: the banner must not offer them.
    assert "noauth" not in token and "OS_USER_ID" not in token
    assert "orchestrator token create" in token and "OS_TOKEN=" in token


@pytest.mark.slow
def test_run_in_token_mode_prints_token_steps_and_logs_redis_under_logs(tmp_path):
    state = tmp_path / "state"
    out = tmp_path / "run.out"
    env = _env(state, ORCH_AUTH="token", ORCH_API_PORT=str(free_port()),
               ORCH_API_WORKERS="1")
    with open(out, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "--host",
                                 "firsthour"], cwd=ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        text = _wait_text(out, "Ctrl-C stops everything", proc)
        assert "orchestrator token create" in text
        assert "OS_AUTH_TYPE=noauth" not in text
        assert (state / "logs" / "redis.log").exists()
        assert not (state / "redis.log").exists()
    finally:
        _stop(proc)


def test_worker_help_shows_its_options():
    r = subprocess.run([sys.executable, "-m", "orchestrator", "worker", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for option in ("--host", "--zone", "--concurrency", "--maintenance", "--loglevel"):
        assert option in r.stdout, r.stdout
    bad = subprocess.run([sys.executable, "-m", "orchestrator", "worker", "--concurrency", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "at least 1" in bad.stderr


def test_flower_logs_under_logs(tmp_path):
    state = tmp_path / "state"
    out = tmp_path / "flower.out"
    with open(out, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "flower", "--port",
                                 str(free_port())], cwd=ROOT,
                                env=_env(state, ORCH_BROKER_URL="memory://"), stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_text(state / "logs" / "flower.log", "Visit me at http://127.0.0.1", proc)
        assert str(state / "logs" / "flower.log") in out.read_text()
    finally:
        _stop(proc, signal.SIGTERM)
