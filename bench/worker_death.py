#!/usr/bin/env python3
"""Time from a storage worker's SIGKILL, mid-backup, to the job's terminal state.

Runs the real stack with the DEFAULT settings (lease TTL 60 s, reaper every
15 s, heartbeat 10 s): private Redis, SQLite, a storage worker, the
maintenance worker and beat. Each round backs up a 1 GiB volume of random
data, kills the worker's process group once bytes are flowing, and waits for
the backup to become `error`. Prints one JSON line.

    bench/worker_death.py [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import api  # noqa: E402
from orchestrator import volumes  # noqa: E402
from orchestrator.config import Settings  # noqa: E402
from orchestrator.context import RequestContext  # noqa: E402
from orchestrator.db import get_database  # noqa: E402
from orchestrator.db import utcnow  # noqa: E402
from orchestrator.dispatch import Publisher  # noqa: E402
from orchestrator.dispatch import dispatch  # noqa: E402
from orchestrator.embedded import RedisServer  # noqa: E402
from orchestrator.embedded import free_port  # noqa: E402
from orchestrator.migrate import upgrade  # noqa: E402
from orchestrator.models import Backup  # noqa: E402
from orchestrator.models import Volume  # noqa: E402
from orchestrator.tasks import make_celery  # noqa: E402

GiB = 1024 ** 3


def spawn(args, env, log):
    return subprocess.Popen(args, cwd=str(ROOT), env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait(predicate, timeout, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="worker-death-", dir="/tmp"))
    redis = RedisServer(str(tmp / "redis")).start()
    settings = Settings(state_dir=str(tmp / "state"), broker_url=redis.url)  # defaults otherwise
    upgrade(settings.database_url)
    env = {**os.environ, **settings.as_env()}
    db = get_database(settings.database_url)
    publisher = Publisher(make_celery(settings))
    ctx = RequestContext("bench", "bench")
    procs = [spawn([sys.executable, "-m", "workers", "--maintenance", "--host", "control",
                    "--metrics-port", "0"], env, tmp / "maintenance.log"),
             spawn([sys.executable, "-m", "celery", "-A", "orchestrator.celery_app", "beat",
                    "-s", str(tmp / "beat")], env, tmp / "beat.log")]
    times = []
    try:
        for round_no in range(args.rounds):
            host = f"victim-{round_no}"
            worker = spawn([sys.executable, "-m", "workers", "--host", host, "-c", "1",
                            "--metrics-port", str(free_port())], env, tmp / f"{host}.log")
            procs.append(worker)
            wait(lambda: " ready: queues " in (tmp / f"{host}.log").read_text(), 60, 0.1)
            wait(lambda: _host_up(db, settings, host), 30, 0.1)
            with db.scope() as s:
                vol, job = volumes.new_volume(
                    s, ctx, settings, size=1, name=None, description=None,
                    availability_zone=None, metadata=None, volume_type=None, now=utcnow())
            dispatch(db, publisher, [job], undo_on_failure=True)
            wait(lambda: _status(db, Volume, vol.id) == "available", 30)
            with open(Path(settings.volume_path) / f"volume-{vol.id}", "r+b") as f:
                for _ in range(16):
                    f.write(os.urandom(64 * 1024 * 1024))
            with db.scope() as s:
                backup, jobs = api.create_backup(s, ctx, settings, volume_id=vol.id, now=utcnow())
            dispatch(db, publisher, jobs, undo_on_failure=True)
            wait(lambda: _progress(db, backup.id) > 0, 60)
            os.killpg(worker.pid, signal.SIGKILL)
            killed = time.monotonic()
            wait(lambda: _status(db, Backup, backup.id) == "error", 300, 0.05)
            times.append(round(time.monotonic() - killed, 2))
            print(f"round {round_no}: {times[-1]} s", file=sys.stderr)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
        redis.stop()
    print(json.dumps({
        "lease_ttl_s": settings.lease_ttl, "reaper_interval_s": settings.reaper_interval,
        "bound_s": settings.lease_ttl + settings.reaper_interval,
        "death_to_error_s": times, "median_s": statistics.median(times), "max_s": max(times),
    }))


def _host_up(db, settings, host):
    from orchestrator import hosts
    with db.scope(write=False) as s:
        return any(x.host == host for x in hosts.live_hosts(
            s, hosts.BACKUP_BINARY, now=utcnow(), down_time=settings.service_down_time))


def _status(db, model, rid):
    with db.scope(write=False) as s:
        return s.get(model, rid).status


def _progress(db, backup_id):
    with db.scope(write=False) as s:
        return s.get(Backup, backup_id).progress_bytes or 0


if __name__ == "__main__":
    main()
