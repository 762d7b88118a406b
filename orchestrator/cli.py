"""The `orchestrator` command: run the stack, serve, work, migrate, monitor."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from orchestrator.config import Settings
from orchestrator.config import default_host


def _env(settings: Settings) -> dict:
    env = dict(os.environ)
    env.update(settings.as_env())
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@click.group()
def main() -> None:
    """Cinder-compatible volume backup orchestrator."""


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head")
def db_upgrade(revision: str) -> None:
    """Run the alembic migrations up to REVISION."""
    from orchestrator.migrate import upgrade
    settings = Settings.from_env()
    upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}: {settings.database_url}")


@main.command()
@click.option("--workers", "-w", type=int, default=None, help="gunicorn worker processes")
def api(workers: int | None) -> None:
    """Serve the HTTP API with gunicorn on ORCH_API_HOST:ORCH_API_PORT."""
    settings = Settings.from_env()
    os.execvpe(sys.executable, _gunicorn_args(settings, workers), _env(settings))


def _gunicorn_args(settings: Settings, workers: int | None) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--workers", str(workers or settings.api_workers),
            "--bind", f"{settings.api_host}:{settings.api_port}", "--worker-class", "gthread",
            "--threads", "4", "--access-logfile", "-", "--log-level", "warning",
            "--graceful-timeout", "10", "orchestrator.wsgi:app"]


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def worker(args) -> None:
    """A storage-node worker (same options as `python -m workers`)."""
    from workers.__main__ import main as worker_main
    sys.exit(worker_main(list(args)))


@main.command()
def beat() -> None:
    """The periodic scheduler (run exactly one per deployment)."""
    settings = Settings.from_env()
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    os.execvpe(sys.executable, _beat_args(settings), _env(settings))


def _beat_args(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "orchestrator.celery_app", "beat",
            "-s", str(Path(settings.state_dir) / "beat-schedule"), "-l", "WARNING"]


@main.command()
@click.option("--port", default=5555, type=int)
def flower(port: int) -> None:
    """Flower on 127.0.0.1 against the configured broker."""
    settings = Settings.from_env()
    env = _env(settings)
    env.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    os.execvpe(sys.executable, [sys.executable, "-m", "celery", "-A", "orchestrator.celery_app",
                                "flower", "--address=127.0.0.1", f"--port={port}"], env)


@main.command()
@click.option("--host", default=None, help="storage node name (default: this machine's)")
@click.option("--zone", default="nova", show_default=True)
def run(host: str | None, zone: str) -> None:
    """Run the whole stack on one machine: Redis, API, worker, maintenance worker, beat."""
    from orchestrator.embedded import RedisServer
    from orchestrator.migrate import upgrade

    settings = Settings.from_env()
    state = Path(settings.state_dir)
    logs = Path(settings.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    host = host or default_host()
    redis = None
    if "ORCH_BROKER_URL" not in os.environ:
        redis = RedisServer(str(state)).start()
        settings.broker_url = redis.url
    upgrade(settings.database_url)
    env = _env(settings)
    children: dict[str, subprocess.Popen] = {}

    def spawn(name: str, args: list[str]) -> None:
        log = open(logs / f"{name}.log", "ab")
        children[name] = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)

    spawn("api", _gunicorn_args(settings, None))
    spawn("worker", [sys.executable, "-m", "workers", "--host", host, "--zone", zone])
    spawn("maintenance", [sys.executable, "-m", "workers", "--maintenance", "--host", host])
    spawn("beat", _beat_args(settings))

    stopping = {"flag": False}

    def stop(signum=None, frame=None):
        stopping["flag"] = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    endpoint = f"http://{settings.api_host}:{settings.api_port}/v3"
    click.echo(f"""
Backup orchestrator running (state in {state}, logs in {logs}):
  redis        {settings.broker_url}{'' if redis else ' (external)'}
  database     {settings.database_url}
  api          {endpoint}   pid {children['api'].pid}
  worker       host {host}, zone {zone}   pid {children['worker'].pid}
  maintenance  pid {children['maintenance'].pid}
  beat         pid {children['beat'].pid}

Try it with the cinder CLI (from this project's virtualenv):
  export OS_AUTH_TYPE=noauth OS_USER_ID=demo OS_PROJECT_ID=demo CINDER_ENDPOINT={endpoint}
  .venv/bin/cinder create --name vol1 1
  .venv/bin/cinder backup-create --name b1 vol1
  .venv/bin/cinder backup-list
  .venv/bin/cinder backup-restore --name restored b1

Ctrl-C stops everything.
""")
    code = 0
    try:
        while not stopping["flag"]:
            for name, proc in children.items():
                if proc.poll() is not None:
                    click.echo(f"{name} exited with {proc.returncode}; see {logs / name}.log",
                               err=True)
                    stopping["flag"] = True
                    code = 1
                    break
            time.sleep(0.5)
    finally:
        click.echo("stopping...")
        for proc in children.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in children.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if redis:
            redis.stop()
        click.echo("stopped.")
    sys.exit(code)
