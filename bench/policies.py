#!/usr/bin/env python3
"""Backup-policy scheduling benchmark: the tick's cost idle and busy, and run lateness.

Seeds 100,000 volumes in 100 projects under 1,000 policies (100 volumes
each, retention keep_last=7) through the project's models, with one live
backup host and a private Redis as the broker, then measures the real tick
(orchestrator/policies/service.py, as the maintenance worker runs it):

* tick_idle_ms, tick_idle_statements: a tick when nothing is due (median of
  200 ticks; SQL statements counted with an SQLAlchemy event);
* tick_1pct_ms: a tick with 1 % of the policies due (10 policies, 1,000
  backups created through api.create_backup, published, then pruned);
* lateness_p50_s, lateness_p99_s: 100 policies (10,000 volumes) all due at
  the same instant; ``--processes`` forked processes (default 2, the pool of
  one maintenance worker as `orchestrator run` starts it) run beat's ticks
  back to back, sharing the due runs through their claims, and each
  backup's lateness is its due time → its job published into the broker by
  the real dispatch path (no storage worker consumes them).

The last stdout line is one JSON object.

    bench/policies.py                   # SQLite (as `make run` uses it)
    bench/policies.py --db postgresql   # a throwaway database on 127.0.0.1:5432
    bench/policies.py --db postgresql+psycopg://user@host/db
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import event  # noqa: E402
from sqlalchemy import insert  # noqa: E402
from sqlalchemy import select  # noqa: E402
from sqlalchemy import update  # noqa: E402

from orchestrator import hosts  # noqa: E402
from orchestrator.config import Settings  # noqa: E402
from orchestrator.db import get_database  # noqa: E402
from orchestrator.db import reset_databases  # noqa: E402
from orchestrator.db import utcnow  # noqa: E402
from orchestrator.dispatch import Publisher  # noqa: E402
from orchestrator.embedded import RedisServer  # noqa: E402
from orchestrator.embedded import free_port  # noqa: E402
from orchestrator.migrate import upgrade  # noqa: E402
from orchestrator.models import BackupPolicy  # noqa: E402
from orchestrator.models import Job  # noqa: E402
from orchestrator.models import Volume  # noqa: E402
from orchestrator.policies import service  # noqa: E402
from orchestrator.tasks import make_celery  # noqa: E402

VOLUMES, POLICIES, PROJECTS = 100_000, 1_000, 100
HOST = "bench-node"


def log(msg: str) -> None:
    print(f"[bench/policies {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class TimedPublisher(Publisher):
    """The real publisher, remembering when each job went into the broker."""

    def __init__(self, app):
        super().__init__(app)
        self.sent: dict[str, float] = {}

    def send(self, job) -> None:
        super().send(job)
        self.sent[job.id] = time.time()


def postgres_url() -> tuple[str, callable] | None:
    """A throwaway database on the local PostgreSQL, and its dropper."""
    try:
        import psycopg
    except ImportError:
        return None
    for user in ("postgres", "root"):
        dsn = f"host=127.0.0.1 port=5432 user={user} dbname=postgres connect_timeout=2"
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                name = f"bench_policies_{uuid.uuid4().hex[:10]}"
                conn.execute(f'CREATE DATABASE "{name}"')
        except Exception:
            continue

        def drop(dsn=dsn, name=name):
            reset_databases()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return f"postgresql+psycopg://{user}@127.0.0.1:5432/{name}", drop
    return None


def seed(db, now: dt.datetime) -> list[str]:
    """100,000 volumes and 1,000 policies, none due for an hour; returns policy ids."""
    volumes, policies = [], []
    per_policy = VOLUMES // POLICIES
    for p in range(POLICIES):
        project = f"proj{p % PROJECTS:03d}"
        ids = [str(uuid.uuid4()) for _ in range(per_policy)]
        for vid in ids:
            volumes.append({"id": vid, "project_id": project, "user_id": "bench",
                            "host": HOST, "availability_zone": "nova", "size": 1,
                            "status": "available", "display_name": None,
                            "volume_type": "__DEFAULT__", "bootable": False, "metadata": {},
                            "created_at": now, "deleted": False})
        policies.append({
            "id": str(uuid.uuid4()), "project_id": project, "user_id": "bench",
            "display_name": f"p{p}", "interval_seconds": 86400, "cron": None,
            "timezone": "UTC", "start_window_seconds": 3600, "run_missed": True,
            "volume_ids": ids, "volume_metadata": {}, "retention": {"keep_last": 7},
            "enabled": True, "missed_runs": 0, "created_at": now, "deleted": False,
            # Spread over the next day, none in the coming hour.
            "next_run_at": now + dt.timedelta(hours=1, seconds=p * 80)})
    with db.scope() as s:
        for start in range(0, len(volumes), 5000):
            s.execute(insert(Volume.__table__), volumes[start:start + 5000])
        s.execute(insert(BackupPolicy.__table__), policies)
        hosts.record_heartbeat(s, HOST, [hosts.BACKUP_BINARY, hosts.VOLUME_BINARY],
                               zone="nova", now=utcnow())
    return [p["id"] for p in policies]


def count_statements(db):
    counter = {"n": 0}

    def on_execute(*_args, **_kw):
        counter["n"] += 1

    # On PostgreSQL the read engine is the write engine with options (its events are the
    # write engine's: listening on both would count each statement twice).
    engines = [db.write_engine] + ([db.engine] if db.is_sqlite else [])
    for engine in engines:
        event.listen(engine, "before_cursor_execute", on_execute)

    def stop():
        for engine in engines:
            event.remove(engine, "before_cursor_execute", on_execute)
    return counter, stop


def make_due(db, policy_ids: list[str], at: dt.datetime) -> None:
    with db.scope() as s:
        s.execute(update(BackupPolicy).where(BackupPolicy.id.in_(policy_ids))
                  .values(next_run_at=at))


def drain(settings: Settings, due_at: dt.datetime, results) -> None:
    """One maintenance pool process: beat's ticks back to back until nothing is due."""
    publisher = TimedPublisher(make_celery(settings))
    while utcnow() < due_at:
        time.sleep(0.005)
    while service.tick(settings, publisher=publisher)["due"]:
        pass
    results.put(publisher.sent)


def run(url: str | None, state: Path, processes: int) -> dict:
    redis = RedisServer(str(state / "redis"), port=free_port(), persist=False).start()
    try:
        settings = Settings(state_dir=str(state), broker_url=redis.url,
                            database_url=url or "", quota_backups=-1,
                            quota_backup_gigabytes=-1, service_down_time=3600,
                            heartbeat_interval=10)
        upgrade(settings.database_url)
        db = get_database(settings.database_url)
        now = utcnow()
        log(f"seeding {VOLUMES} volumes, {POLICIES} policies on {db.engine.dialect.name}")
        started = time.monotonic()
        policy_ids = seed(db, now)
        log(f"seeded in {time.monotonic() - started:.1f} s")
        publisher = TimedPublisher(make_celery(settings))
        service.tick(settings, publisher=publisher)  # warm: connections, statement caches
        idle = []
        for _ in range(200):
            t0 = time.perf_counter()
            counts = service.tick(settings, publisher=publisher)
            idle.append((time.perf_counter() - t0) * 1000)
            assert counts["due"] == 0, counts
        counter, stop = count_statements(db)
        service.tick(settings, publisher=publisher)
        stop()
        idle_statements = counter["n"]
        log(f"idle tick: median {statistics.median(idle):.2f} ms, {idle_statements} "
            "statement(s)")
        one_pct = policy_ids[:POLICIES // 100]
        make_due(db, one_pct, utcnow() - dt.timedelta(seconds=1))
        t0 = time.perf_counter()
        counts = service.tick(settings, publisher=publisher)
        tick_1pct_ms = (time.perf_counter() - t0) * 1000
        assert counts["scheduled"] == len(one_pct), counts
        log(f"1 % tick: {tick_1pct_ms:.0f} ms for {len(one_pct)} policies")
        due_group = policy_ids[POLICIES // 100: POLICIES // 100 + 100]
        due_at = utcnow().replace(microsecond=0) + dt.timedelta(seconds=3)
        make_due(db, due_group, due_at)
        reset_databases()  # the drainers are forked: no connection crosses the fork
        results = multiprocessing.get_context("fork").Queue()
        drainers = [multiprocessing.get_context("fork").Process(
            target=drain, args=(settings, due_at, results)) for _ in range(processes)]
        t0 = time.perf_counter()
        for proc in drainers:
            proc.start()
        sent: dict[str, float] = {}
        for _ in drainers:
            sent.update(results.get(timeout=3600))
        for proc in drainers:
            proc.join(60)
        drain_s = time.perf_counter() - t0 - max(0.0, (due_at - utcnow()).total_seconds())
        db = get_database(settings.database_url)
        with db.scope(write=False) as s:
            jobs = s.execute(select(Job.id).where(Job.op == "backup_create",
                                                  Job.id.in_(list(sent)))).all()
        publisher.sent = sent
        due_epoch = due_at.replace(tzinfo=dt.UTC).timestamp()
        late = sorted(publisher.sent[j.id] - due_epoch for j in jobs)
        assert len(late) == 100 * (VOLUMES // POLICIES), len(late)
        p50 = late[len(late) // 2]
        p99 = late[min(len(late) - 1, int(len(late) * 0.99))]
        log(f"10,000 due backups dispatched in {drain_s:.1f} s: p50 {p50:.2f} s, "
            f"p99 {p99:.2f} s")
        return {"db": db.engine.dialect.name, "volumes": VOLUMES, "policies": POLICIES,
                "maintenance_processes": processes,
                "tick_idle_ms": round(statistics.median(idle), 3),
                "tick_idle_p99_ms": round(sorted(idle)[int(len(idle) * 0.99)], 3),
                "tick_idle_statements": idle_statements,
                "tick_1pct_ms": round(tick_1pct_ms, 1), "tick_1pct_backups": 1000,
                "lateness_p50_s": round(p50, 3), "lateness_p99_s": round(p99, 3),
                "lateness_backups": len(late), "drain_s": round(drain_s, 2),
                "goals": {"tick_idle_ms": 20, "lateness_p99_s": 60}}
    finally:
        reset_databases()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="sqlite",
                        help="sqlite (default), postgresql (local throwaway) or a URL")
    parser.add_argument("--processes", type=int, default=2,
                        help="maintenance pool processes draining the due runs (default 2, "
                             "the maintenance worker's default concurrency)")
    args = parser.parse_args()
    drop = None
    url = None
    if args.db == "postgresql":
        found = postgres_url()
        if found is None:
            raise SystemExit("no PostgreSQL answers on 127.0.0.1:5432")
        url, drop = found
    elif args.db != "sqlite":
        url = args.db
    try:
        with tempfile.TemporaryDirectory(prefix="bench-policies-") as tmp:
            result = run(url, Path(tmp), args.processes)
    finally:
        if drop:
            drop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
