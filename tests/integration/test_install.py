"""`pip install .` into a fresh virtualenv outside the checkout gives a working service.

The package is built from the tree and installed with its declared dependencies
(pyproject.toml) into a new venv; then, from a directory that is not the
checkout, `orchestrator db upgrade` builds the schema from the migrations that
ship in the package, `orchestrator api` answers and `orchestrator worker`
becomes ready against a real Redis.
"""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import requests
from alembic.script import ScriptDirectory
from orch_testlib import ROOT

from orchestrator.embedded import free_port
from orchestrator.keys import create_kek_file
from orchestrator.migrate import alembic_config

pytestmark = pytest.mark.slow


def _run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the package and its dependencies; skips if no index answers."""
    base = tmp_path_factory.mktemp("install")
    probe = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                  "-d", str(base / "probe"), "setuptools>=68"], timeout=300)
    if probe.returncode != 0:
        pytest.skip("no package index reachable (pip download setuptools failed), so the "
                    f"dependencies cannot be installed: {probe.stderr.strip()[-300:]}")
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    assert made.returncode == 0, made.stderr
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]
    # From a copy of the tree: building in place would leave build/ in the checkout.
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "build", "*.egg-info", "__pycache__", ".*_cache",
        ".hypothesis"))
    r = _run([*pip, str(source)], cwd=base, timeout=1500)
    assert r.returncode == 0, f"pip install . failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return venv


def _env(state, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ORCH_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"ORCH_STATE_DIR": str(state), **extra})
    return env


def test_installed_package_comes_from_the_venv(installed, tmp_path):
    r = _run([str(installed / "bin" / "python"), "-c",
              "import orchestrator.migrate as m, workers; print(m.MIGRATIONS); "
              "print(workers.__file__)"], cwd=tmp_path, env=_env(tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    migrations, workers_file = r.stdout.split()
    assert migrations.startswith(str(installed)) and workers_file.startswith(str(installed))
    assert not migrations.startswith(str(ROOT)) and "/src/" not in migrations


def test_db_upgrade_api_and_worker_from_the_install(installed, tmp_path, redis_server):
    orchestrator = str(installed / "bin" / "orchestrator")
    state = tmp_path / "state"
    broker = f"redis://127.0.0.1:{redis_server.port}/4"
    env = _env(state, ORCH_BROKER_URL=broker)

    r = _run([orchestrator, "db", "upgrade"], cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    with sqlite3.connect(state / "orchestrator.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert {"backups", "jobs", "services", "api_tokens"} <= tables
    assert version == head

    # An operator gives the worker its key encryption key (encryption is on by default).
    assert create_kek_file(str(state / "kek.key"))
    r = _run([orchestrator, "worker", "--help"], cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 0 and "--concurrency" in r.stdout and "--zone" in r.stdout

    port = free_port()
    logs = {}
    procs = {}
    for name, args in (("api", [orchestrator, "api", "-w", "1"]),
                       ("worker", [orchestrator, "worker", "--host", "installed", "-c", "1"])):
        logs[name] = tmp_path / f"{name}.log"
        with open(logs[name], "ab") as log:
            procs[name] = subprocess.Popen(args, cwd=tmp_path, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True,
                                           env={**env, "ORCH_API_PORT": str(port)})
    try:
        deadline = time.monotonic() + 60
        api_ok = worker_ok = False
        while time.monotonic() < deadline and not (api_ok and worker_ok):
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited:\n{logs[name].read_text()[-3000:]}"
            try:
                api_ok = api_ok or requests.get(
                    f"http://127.0.0.1:{port}/v3/backups", timeout=2,
                    headers={"X-Auth-Token": "demo:demo"}).status_code == 200
            except requests.RequestException:
                pass
            worker_ok = worker_ok or " ready: queues " in logs["worker"].read_text()
            time.sleep(0.2)
        assert api_ok, logs["api"].read_text()[-3000:]
        assert worker_ok, logs["worker"].read_text()[-3000:]
        # The worker's heartbeat reached the database the API reads.
        services = requests.get(f"http://127.0.0.1:{port}/v3/os-services", timeout=5,
                                headers={"X-Auth-Token": "admin:admin"}).json()["services"]
        assert {s["host"] for s in services} >= {"installed"}, services
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
