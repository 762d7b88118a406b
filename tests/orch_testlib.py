"""Test helpers: real HTTP client, worker subprocesses, volume files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from orchestrator.config import Settings
from orchestrator.embedded import free_port
from orchestrator.metrics import MULTIPROC_ENV
from orchestrator.metrics import multiproc_dir

ROOT = Path(__file__).resolve().parent.parent


def make_settings(state_dir: Path, broker_url: str, **overrides) -> Settings:
    values = dict(state_dir=str(state_dir), broker_url=broker_url, heartbeat_interval=1.0,
                  service_down_time=4.0, lease_ttl=6.0, reaper_interval=2.0,
                  dispatch_resend_after=5.0, log_level="INFO")
    values.update(overrides)
    settings = Settings(**values)
    # Encryption is on by default: each test deployment gets its own KEK file.
    from orchestrator.keys import create_kek_file
    create_kek_file(settings.kek_file)
    return settings


class ApiServer:
    """The Flask app served over real HTTP on a loopback port."""

    def __init__(self, settings: Settings):
        from werkzeug.serving import make_server

        from orchestrator.http import create_app
        self.app = create_app(settings)
        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()


class Client:
    """A small Cinder v3 HTTP client with noauth tokens."""

    def __init__(self, base: str, token: str = "demo:demo", version: str = "3.71"):
        self.base = base
        self.session = requests.Session()
        self.session.headers.update({"X-Auth-Token": token, "Content-Type": "application/json",
                                     "OpenStack-API-Version": f"volume {version}"})

    def url(self, path: str) -> str:
        return f"{self.base}/v3{path}"

    def get(self, path, **kw):
        return self.session.get(self.url(path), timeout=30, **kw)

    def post(self, path, json=None, **kw):
        return self.session.post(self.url(path), json=json, timeout=30, **kw)

    def put(self, path, json=None, **kw):
        return self.session.put(self.url(path), json=json, timeout=30, **kw)

    def delete(self, path, **kw):
        return self.session.delete(self.url(path), timeout=30, **kw)

    def wait(self, kind: str, rid: str, statuses: set[str], timeout: float = 60.0) -> dict:
        """Poll a volume/backup/snapshot until its status is in ``statuses``."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            r = self.get(f"/{kind}s/{rid}")
            if r.status_code == 404 and "deleted" in statuses:
                return {"status": "deleted"}
            assert r.status_code == 200, r.text
            last = r.json()[kind]
            if last["status"] in statuses:
                return last
            time.sleep(0.1)
        raise AssertionError(f"{kind} {rid} stuck in {last and last['status']!r}, "
                             f"wanted {statuses}")

    def create_volume(self, size: int = 1, **extra) -> dict:
        r = self.post("/volumes", {"volume": {"size": size, **extra}})
        assert r.status_code == 202, r.text
        return self.wait("volume", r.json()["volume"]["id"], {"available", "error"})


class WorkerProcess:
    """`python -m workers` as a subprocess; its log is kept for assertions."""

    def __init__(self, settings: Settings, host: str, zone: str = "nova", *,
                 maintenance: bool = False, concurrency: int = 1, env: dict | None = None):
        self.settings, self.host, self.zone = settings, host, zone
        self.log_path = Path(settings.state_dir) / f"worker-{host}{'-m' if maintenance else ''}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "workers", "--host", host, "--zone", zone,
                "-c", str(concurrency)]
        if maintenance:
            args.append("--maintenance")
        # Each worker its own free metrics port, and its metrics directory set as the
        # worker would set it (which saves it a second start).
        self.metrics_port = free_port()
        node = f"{'maintenance' if maintenance else 'worker'}@{host}"
        full_env = {**os.environ, **settings.as_env(),
                    "ORCH_WORKER_METRICS_PORT": str(self.metrics_port),
                    MULTIPROC_ENV: str(multiproc_dir(settings, node)), **(env or {})}
        self.proc = subprocess.Popen(args, cwd=str(ROOT), env=full_env,
                                     stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.host} exited:\n{self.log[-3000:]}")
            if " ready: queues " in self.log:
                return self
            time.sleep(0.1)
        raise AssertionError(f"worker {self.host} not ready:\n{self.log[-3000:]}")

    def kill(self, sig=signal.SIGKILL) -> None:
        """Signal the whole process group (the Celery parent and its prefork children)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM (a warm shutdown); SIGKILL if it has not ended within its 30 s."""
        if self.proc.poll() is None:
            try:
                self.kill(signal.SIGTERM)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)


def volume_file(settings: Settings, volume_id: str) -> Path:
    return Path(settings.volume_path) / f"volume-{volume_id}"


def write_pattern(path: Path, seed: int, regions: list[tuple[int, int]]) -> None:
    """Write deterministic pseudo-random bytes at (offset, length) regions."""
    import random
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for offset, length in regions:
            f.seek(offset)
            f.write(rng.randbytes(length))



def postgres_admin_dsn() -> str | None:
    """A libpq DSN for a PostgreSQL answering on 127.0.0.1:5432, or None."""
    try:
        import psycopg
    except ImportError:
        return None
    for user in (os.environ.get("ORCH_TEST_PG_USER"), "postgres", "root"):
        if not user:
            continue
        dsn = f"host=127.0.0.1 port=5432 user={user} dbname=postgres connect_timeout=2"
        try:
            with psycopg.connect(dsn):
                return dsn
        except Exception:
            continue
    return None


class ThrowawayPostgres:
    """A fresh database on the local PostgreSQL, dropped on close."""

    def __init__(self, admin_dsn: str):
        import uuid

        import psycopg
        self.admin_dsn = admin_dsn
        self.name = f"orch_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        user = dict(part.split("=", 1) for part in admin_dsn.split())["user"]
        self.url = f"postgresql+psycopg://{user}@127.0.0.1:5432/{self.name}"

    def close(self) -> None:
        import psycopg

        from orchestrator.db import reset_databases
        reset_databases()
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class ApiProcess:
    """The API under granian (several processes), as `orchestrator api` runs it."""

    def __init__(self, settings: Settings, workers: int = 4):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        from orchestrator.serve import api_command
        from orchestrator.serve import api_environment
        bind = f"127.0.0.1:{self.port}"
        env = {**os.environ, **settings.as_env(), "ORCH_API_PORT": str(self.port),
               **api_environment(settings, bind=bind)}
        self.log_path = Path(settings.state_dir) / f"api-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            api_command(settings, workers=workers, bind=bind),
            cwd=str(ROOT), env=env,
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> ApiProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(self.log_path.read_text()[-3000:])
            try:
                if requests.get(self.url + "/", timeout=1).status_code == 300:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError("the API did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


class BeatProcess:
    """celery beat for the maintenance schedule (reaper, reservations, reconcile)."""

    def __init__(self, settings: Settings):
        env = {**os.environ, **settings.as_env()}
        self.log_path = Path(settings.state_dir) / "beat.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "orchestrator.celery_app", "beat",
             "-s", str(Path(settings.state_dir) / "beat-schedule"), "-l", "INFO"],
            cwd=str(ROOT), env=env, stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


def fill_random(path: Path, nbytes: int, chunk: int = 64 * 1024 * 1024) -> None:
    """Incompressible data all through a volume, so its backup takes real time."""
    with open(path, "r+b") as f:
        done = 0
        while done < nbytes:
            n = min(chunk, nbytes - done)
            f.write(os.urandom(n))
            done += n


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    """Poll until ``predicate()`` returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def rabbitmq_url() -> str | None:
    """The local RabbitMQ, when one answers on 127.0.0.1:5672."""
    import socket
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return "amqp://guest:guest@127.0.0.1:5672//"
    except OSError:
        return None


class Broker:
    """A broker a test may stop and start: a private Redis, or the local RabbitMQ."""

    def __init__(self, kind: str, directory: Path):
        self.kind = kind
        if kind == "redis":
            from orchestrator.embedded import RedisServer
            self.redis = RedisServer(str(directory), port=free_port(), persist=True).start()
            self.url = self.redis.url
        else:
            self.redis = None
            self.url = rabbitmq_url()

    def stop(self) -> None:
        if self.redis:
            self.redis.stop()
        else:
            subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True,
                           timeout=120)

    def start(self) -> None:
        if self.redis:
            self.redis.start()
        else:
            subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True,
                           timeout=120)
            subprocess.run(["rabbitmqctl", "await_startup"], check=False, capture_output=True,
                           timeout=120)

    def close(self) -> None:
        if self.redis:
            self.redis.stop()
