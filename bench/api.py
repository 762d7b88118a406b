#!/usr/bin/env python3
"""Control-plane benchmark: API throughput and latency, dispatch latency, heartbeat cost.

For each database (SQLite as `make run` uses it, and PostgreSQL when one
answers on 127.0.0.1:5432) and each table size (1,000 / 10,000 / 1,000,000
backups, seeded through the project's own models), it starts the stack
(private Redis, the API under granian, one storage worker), runs
../shared/bench/api_load.py (wrk engine) for show, list, create and mixed at
concurrency 1, 8 and 32, and measures dispatch latency (create accepted →
job started on the worker), the database cost of 1,000 hosts heartbeating
every 10 s, and host choice time. The last stdout line is one JSON object.

list_1m_over_1k compares a 1,000-backup database with the grown one side by
side (both APIs up, list runs alternating, medians).

    bench/api.py                      # everything (long: about 25 minutes)
    bench/api.py --sizes 1000 --concurrency 32 --duration 10 --db sqlite   # quick look
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402
from sqlalchemy import select  # noqa: E402

from orchestrator import hosts  # noqa: E402
from orchestrator.config import Settings  # noqa: E402
from orchestrator.db import get_database  # noqa: E402
from orchestrator.db import reset_databases  # noqa: E402
from orchestrator.db import utcnow  # noqa: E402
from orchestrator.embedded import RedisServer  # noqa: E402
from orchestrator.embedded import free_port  # noqa: E402
from orchestrator.migrate import upgrade  # noqa: E402
from orchestrator.models import Backup  # noqa: E402
from orchestrator.models import Job  # noqa: E402
from orchestrator.models import Volume  # noqa: E402
from orchestrator.models import new_id  # noqa: E402
from orchestrator.serve import api_command  # noqa: E402
from orchestrator.serve import api_environment  # noqa: E402

PROJECT = "demo"
LOAD = None  # path of api_load.py, found in main()
CINDER = {"show_32_rps": 353, "show_32_p99_ms": 131, "list_32_rps": 74, "list_32_p99_ms": 645,
          "create_32_rps": 41, "create_32_p99_ms": 921, "list_10k_32_rps": 58}


def log(msg: str) -> None:
    print(f"[bench/api {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def find_load_script() -> str:
    for cand in (ROOT.parent / "shared" / "bench" / "api_load.py",
                 Path("/work/shared/bench/api_load.py"),
                 Path(os.environ.get("API_LOAD", "/nonexistent"))):
        if cand.exists():
            return str(cand)
    raise SystemExit("api_load.py not found (../shared/bench/api_load.py)")


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    log("wrk not found: installing Debian's wrk")
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
                       stdout=subprocess.DEVNULL)


# ----------------------------------------------------------------------------- seeding


def creation_times(n: int) -> list:
    """``n`` distinct creation times, one millisecond apart, the last one now.

    Real backups are created one after another, each with its own time, so the
    newest rows sit together at the end of the table. Stamping a whole batch with
    one time would order the first list page by random UUIDs across the table.
    """
    import datetime as dt
    now = utcnow()
    return [now - dt.timedelta(milliseconds=n - 1 - i) for i in range(n)]


def seed(settings: Settings, n_backups: int, n_volumes: int, host: str) -> None:
    """Insert volumes and backups in bulk through the models (no HTTP, no jobs)."""
    db = get_database(settings.database_url)
    now = utcnow()
    batch = 20000
    with db.scope() as s:
        have_b = s.scalar(select(Backup.id).limit(1))
    if have_b is None:
        vol_for_backups = new_id()
        with db.scope() as s:
            s.execute(insert(Volume), [{
                "id": vol_for_backups, "project_id": PROJECT, "user_id": PROJECT, "host": host,
                "availability_zone": "nova", "size": 1, "status": "available",
                "volume_type": "__DEFAULT__", "bootable": False, "metadata": {},
                "deleted": False, "created_at": now}])
        done = 0
        stamps = creation_times(n_backups)
        while done < n_backups:
            rows = []
            for i in range(done, min(n_backups, done + batch)):
                rows.append({"id": new_id(), "user_id": PROJECT, "project_id": PROJECT,
                             "volume_id": vol_for_backups, "status": "available",
                             "display_name": f"seed-{i}", "display_description": "seeded",
                             "container": None, "availability_zone": "nova", "size": 1,
                             "object_count": 1, "num_dependent_backups": 0,
                             "progress_bytes": 0, "progress_total": 0, "deleted": False,
                             "created_at": stamps[i], "data_timestamp": stamps[i],
                             "host": host, "service": "orchestrator.drivers.chunked"})
            with db.scope() as s:
                s.execute(insert(Backup), rows)
            done += len(rows)
    with db.scope() as s:
        have_v = s.scalar(select(Volume.id).where(Volume.display_name == "pool").limit(1))
    if have_v is None:
        rows = [{"id": new_id(), "project_id": PROJECT, "user_id": PROJECT, "host": host,
                 "availability_zone": "nova", "size": 1, "status": "available",
                 "display_name": "pool", "volume_type": "__DEFAULT__", "bootable": False,
                 "metadata": {}, "deleted": False, "created_at": now}
                for _ in range(n_volumes)]
        for i in range(0, len(rows), batch):
            with db.scope() as s:
                s.execute(insert(Volume), rows[i:i + batch])


def top_up(settings: Settings, n_backups: int) -> None:
    """Grow the backups table to ``n_backups`` rows (for the 10k and 1M runs)."""
    db = get_database(settings.database_url)
    with db.scope(write=False) as s:
        from sqlalchemy import func
        have = s.scalar(select(func.count()).select_from(Backup))
        vol = s.scalar(select(Backup.volume_id).limit(1))
    stamps = creation_times(n_backups - have)
    first = have
    batch = 20000
    while have < n_backups:
        k = min(batch, n_backups - have)
        rows = [{"id": new_id(), "user_id": PROJECT, "project_id": PROJECT, "volume_id": vol,
                 "status": "available", "display_name": f"seed-{have + i}",
                 "display_description": "seeded", "availability_zone": "nova", "size": 1,
                 "object_count": 1, "num_dependent_backups": 0, "progress_bytes": 0,
                 "progress_total": 0, "deleted": False, "created_at": stamps[have - first + i],
                 "data_timestamp": stamps[have - first + i], "host": "bench-node",
                 "service": "orchestrator.drivers.chunked"} for i in range(k)]
        with db.scope() as s:
            s.execute(insert(Backup), rows)
        have += k


def settle(settings: Settings) -> None:
    """After a bulk load, do now what the database would otherwise do during a measurement.

    PostgreSQL: VACUUM ANALYZE (what autovacuum starts soon after a bulk insert) and a
    CHECKPOINT; SQLite: fold the WAL into the database file. Then flush the page cache's
    dirty pages, so that their writeback does not land in a measured run either.
    """
    db = get_database(settings.database_url)
    with db.engine.connect() as conn:  # no transaction: SQLite's read engine, PG in autocommit
        if db.is_sqlite:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            conn.exec_driver_sql("VACUUM (ANALYZE)")
            try:
                conn.exec_driver_sql("CHECKPOINT")
            except Exception as exc:  # CHECKPOINT needs a privileged role
                log(f"CHECKPOINT skipped: {exc.__class__.__name__}")
    os.sync()


def pool_ids(settings: Settings, path: Path) -> int:
    db = get_database(settings.database_url)
    with db.scope(write=False) as s:
        ids = list(s.scalars(select(Volume.id).where(Volume.display_name == "pool",
                                                     Volume.status == "available")))
    path.write_text("\n".join(ids) + "\n")
    return len(ids)


def backup_ids(settings: Settings, path: Path, limit: int = 20000) -> None:
    db = get_database(settings.database_url)
    with db.scope(write=False) as s:
        ids = list(s.scalars(select(Backup.id).where(Backup.display_name.like("seed-%"))
                             .limit(limit)))
    path.write_text("\n".join(ids) + "\n")


# ----------------------------------------------------------------------------- stack


class Stack:
    """Redis + API + one storage worker, as `make run` starts them."""

    def __init__(self, settings: Settings, workdir: Path, host: str):
        self.settings, self.workdir, self.host = settings, workdir, host
        self.procs: list[subprocess.Popen] = []

    def start(self) -> Stack:
        env = {**os.environ, **self.settings.as_env()}
        # As `orchestrator run` serves them: the API's metrics shared by its processes, the
        # worker's on a port of its own.
        self.procs.append(self._spawn(api_command(self.settings),
                                      {**env, **api_environment(self.settings)}, "api.log"))
        self.procs.append(self._spawn(
            [sys.executable, "-m", "workers", "--host", self.host, "-c", "1", "-l", "WARNING"],
            {**env, "ORCH_WORKER_METRICS_PORT": str(free_port())}, "worker.log"))
        import requests
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url, timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        db = get_database(self.settings.database_url)
        while time.monotonic() < deadline:
            with db.scope(write=False) as s:
                if hosts.live_hosts(s, hosts.BACKUP_BINARY, now=utcnow(),
                                    down_time=self.settings.service_down_time):
                    return self
            time.sleep(0.2)
        raise SystemExit("stack did not start; see " + str(self.workdir))

    @property
    def url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}/v3"

    def _spawn(self, args, env, log_name):
        return subprocess.Popen(args, cwd=str(ROOT), env=env,
                                stdout=open(self.workdir / log_name, "ab"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def run_load(stack: Stack, scenario: str, concurrency: int, duration: float, files: dict,
             offset: int, warmup: float = 2.0) -> dict:
    args = [sys.executable, LOAD, "--url", stack.url, "--project", PROJECT, "--url-style",
            "bare", "--scenario", scenario, "--concurrency", str(concurrency), "--duration",
            str(duration), "--warmup", str(warmup), "--engine", "wrk", "--no-check",
            "--backup-ids-file", str(files["backups"]), "--volume-ids-file",
            str(files["volumes"]), "--pool-offset", str(offset)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration * 4 + 120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"api_load failed: {out.stderr[-2000:]}")
    res = json.loads(lines[-1])
    log(f"{scenario:6s} c={concurrency:<3d} {res['rps']:8.1f} req/s  p50 "
        f"{res['latency_ms'].get('p50') or 0:7.2f}  p99 {res['latency_ms'].get('p99') or 0:7.2f}"
        f" ms  errors {res['error_count']}")
    return res


def drain(settings: Settings, timeout: float = 180.0) -> None:
    """Wait until the worker has finished the jobs a create phase queued, so that the
    next phase measures the API and not the API plus a worker working off a backlog."""
    db = get_database(settings.database_url)
    from sqlalchemy import func
    deadline = time.monotonic() + timeout
    last, still = None, 0
    while time.monotonic() < deadline:
        with db.scope(write=False) as s:
            left = s.scalar(select(func.count()).select_from(Job).where(
                Job.state.in_(("queued", "running"))))
        if not left:
            return
        # Jobs whose messages died with a previous stack's worker never move (no reaper
        # runs in the bench): stop waiting once nothing has moved for 5 s.
        still = still + 1 if left == last else 0
        if still >= 5:
            return
        last = left
        time.sleep(1.0)
    log(f"backlog not drained after {timeout:.0f} s; measuring anyway")


def raise_quota(stack: Stack) -> None:
    import requests
    r = requests.put(f"{stack.url}/os-quota-sets/{PROJECT}", timeout=30,
                     headers={"X-Auth-Token": "admin:admin"},
                     json={"quota_set": {"backups": -1, "backup_gigabytes": -1,
                                         "volumes": -1, "gigabytes": -1}})
    r.raise_for_status()


# ----------------------------------------------------------------------------- extra figures


def dispatch_latency(stack: Stack, files: dict, offset: int, n: int = 100) -> tuple[float, int]:
    """Median ms from a create's commit to the job's claim on the worker (sequential)."""
    import requests
    vols = files["volumes"].read_text().split()[offset:offset + n]
    ids = []
    s = requests.Session()
    for vid in vols:
        r = s.post(f"{stack.url}/backups", json={"backup": {"volume_id": vid}}, timeout=30,
                   headers={"X-Auth-Token": f"{PROJECT}:{PROJECT}"})
        if r.status_code == 202:
            ids.append(r.json()["backup"]["id"])
        time.sleep(0.02)
    db = get_database(stack.settings.database_url)
    deadline = time.monotonic() + 60
    lat = []
    while time.monotonic() < deadline:
        with db.scope(write=False) as sess:
            rows = sess.execute(select(Job.created_at, Job.started_at).where(
                Job.resource_id.in_(ids), Job.op == "backup_create")).all()
        if rows and all(started for _, started in rows):
            lat = [(started - created).total_seconds() * 1000 for created, started in rows]
            break
        time.sleep(0.5)
    return (round(statistics.median(lat), 2) if lat else None), offset + len(vols)


def heartbeat_cost(settings: Settings, n_hosts: int = 1000, interval: float = 10.0,
                   seconds: float = 20.0) -> tuple[float, float]:
    """Database CPU of 1,000 hosts heartbeating every 10 s (% of one core), host choice ms.

    PostgreSQL: the CPU of the server backends of the database, read from
    /proc. SQLite runs inside the heartbeating process, so the CPU spent in
    the database library (statement execution and commit, timed with
    thread_time around the driver calls) is counted; the whole process's CPU,
    Python and SQLAlchemy included, is returned too.
    """
    db = get_database(settings.database_url)
    hosts_ = [f"hb-{i:04d}" for i in range(n_hosts)]
    roles = [hosts.BACKUP_BINARY, hosts.VOLUME_BINARY]  # what each storage node reports
    for h in hosts_:  # registration (the insert path), on the connection the beats reuse
        with db.beat() as conn:
            hosts.record_heartbeat(conn, h, roles, "nova", now=utcnow())
    # Registering 1,000 hosts at once is a bulk load: settle it as after the others (the
    # planner's statistics of an empty services table made each beat a scan of the table
    # until autovacuum analyzes it, a minute later in steady state).
    settle(settings)
    rate = n_hosts / interval
    # PostgreSQL: every server backend of this database (the pool rotates connections).
    backends = None if db.is_sqlite else _client_backends(db)
    in_db = [0.0]
    if db.is_sqlite:
        from sqlalchemy import event
        engine = db.write_engine

        @event.listens_for(engine, "before_cursor_execute")
        def _before(conn, cursor, statement, parameters, context, executemany):
            conn.info["t"] = time.thread_time()

        @event.listens_for(engine, "after_cursor_execute")
        def _after(conn, cursor, statement, parameters, context, executemany):
            in_db[0] += time.thread_time() - conn.info.pop("t", time.thread_time())

        plain_commit = engine.dialect.do_commit

        def timed_commit(dbapi_connection):
            t = time.thread_time()
            plain_commit(dbapi_connection)
            in_db[0] += time.thread_time() - t
        engine.dialect.do_commit = timed_commit
    process0 = _cpu(None)
    cpu0 = _cpu(backends)
    t0 = time.monotonic()
    sent = 0
    while time.monotonic() - t0 < seconds:
        with db.beat() as conn:
            hosts.record_heartbeat(conn, hosts_[sent % n_hosts], roles, "nova", now=utcnow())
        sent += 1
        pause = t0 + sent / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    cpu1 = _cpu(backends)
    elapsed = time.monotonic() - t0
    process_pct = round(100.0 * (_cpu(None) - process0) / elapsed, 2)
    pct = 100.0 * (in_db[0] if db.is_sqlite else cpu1 - cpu0) / elapsed
    times = []
    with db.scope(write=False) as s:
        for _ in range(200):
            t = time.perf_counter()
            hosts.select_host(s, hosts.BACKUP_BINARY, now=utcnow(),
                              down_time=settings.service_down_time, az="nova")
            times.append((time.perf_counter() - t) * 1000)
    return round(pct, 2), round(statistics.median(times), 3), process_pct


def _cpu(pids) -> float:
    """CPU seconds of this process (pids None) or of the given server processes."""
    if pids is None:
        t = os.times()
        return t.user + t.system
    total = 0
    for pid in pids:
        fields = _proc_stat(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None
    for a process that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


# ----------------------------------------------------------------------------- main


def compare_scale(big: Settings, small_url: str, redis: RedisServer, args, workdir: Path,
                  files_big: dict, host: str) -> dict:
    """list_1m_over_1k measured side by side: a 1,000-backup database and the grown one,
    each behind its own API, list runs alternating between them (medians).

    Measured one after the other, minutes apart, the ratio on this shared machine
    follows the neighbours' load more than the table size. Even side by side,
    req/s of one 5 s run swings by ±20 %; the CPU the stack spends per request
    (the API's processes and, on PostgreSQL, the database's server backends) is
    steadier, and is reported beside the ratio.
    """
    small = Settings(state_dir=str(workdir / "small-state"), database_url=small_url,
                     broker_url=redis.url[:-1] + "1", api_port=free_port(),
                     api_workers=big.api_workers, api_threads=big.api_threads,
                     api_keepalive=big.api_keepalive, log_level="WARNING")
    upgrade(small.database_url)
    seed(small, args.sizes[0], 10, host)
    settle(small)
    (workdir / "small").mkdir(exist_ok=True)
    files_small = {"backups": workdir / "small" / "backups.txt",
                   "volumes": workdir / "small" / "volumes.txt"}
    backup_ids(small, files_small["backups"])
    pool_ids(small, files_small["volumes"])
    c = max(args.concurrency)
    stacks = []
    try:
        stacks.append(Stack(small, workdir / "small", host).start())
        stacks.append(Stack(big, workdir, host).start())
        for stack, files in ((stacks[0], files_small), (stacks[1], files_big)):
            run_load(stack, "list", c, 3, files, 0)  # warm both APIs up; not counted
        runs: dict[str, list[float]] = {"small": [], "big": []}
        cpu: dict[str, list[float]] = {"small": [], "big": []}
        pair = (("small", stacks[0], files_small), ("big", stacks[1], files_big))
        for round_no in range(args.scale_rounds):
            # small, big, big, small, ...: a drift of the machine's speed weighs on both.
            for tag, stack, files in (pair if round_no % 2 == 0 else pair[::-1]):
                pids = _stack_pids(stack)
                before = _cpu(pids)
                res = run_load(stack, "list", c, args.scale_duration, files, 0, warmup=0)
                used = _cpu(pids) - before
                runs[tag].append(round(res["rps"], 1))
                cpu[tag].append(round(1000 * used / max(res["requests"], 1), 3))
    finally:
        for stack in stacks:
            stack.stop()
    med = {tag: statistics.median(v) for tag, v in runs.items()}
    cpu_med = {tag: statistics.median(v) for tag, v in cpu.items()}
    return {"concurrency": c, "small_rows": args.sizes[0], "big_rows": max(args.sizes),
            "small_rps_runs": runs["small"], "big_rps_runs": runs["big"],
            "ratio": round(med["big"] / med["small"], 3),
            "small_cpu_ms_per_request": cpu_med["small"],
            "big_cpu_ms_per_request": cpu_med["big"],
            "cpu_ratio": round(cpu_med["big"] / cpu_med["small"], 3)}


def _stack_pids(stack: Stack) -> list[int]:
    """The API's processes (its session: the server and its workers) and, on PostgreSQL,
    the server backends of the stack's database."""
    api = stack.procs[0].pid
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields and int(fields[3]) == api:  # session id
                pids.append(int(entry))
    db = get_database(stack.settings.database_url)
    return pids if db.is_sqlite else pids + _client_backends(db)


def _client_backends(db) -> list[int]:
    """The PostgreSQL server processes serving clients of this database. Client
    backends only: an autovacuum worker busy with the million-row table is no
    request's or heartbeat's cost."""
    with db.scope(write=False) as s:
        return list(s.connection().exec_driver_sql(
            "select pid from pg_stat_activity where datname = current_database() "
            "and backend_type = 'client backend'").scalars())


def run_suite(kind: str, url: str, args, workdir: Path, small_url: str | None = None) -> dict:
    redis = RedisServer(str(workdir / "redis"), port=free_port(), persist=False).start()
    settings = Settings(state_dir=str(workdir / "state"), broker_url=redis.url,
                        database_url=url, api_port=free_port(), api_workers=args.api_workers,
                        api_threads=Settings.from_env().api_threads,
                        api_keepalive=Settings.from_env().api_keepalive, log_level="WARNING")
    upgrade(settings.database_url)
    host = "bench-node"
    sizes = sorted(args.sizes)
    need_volumes = int(args.duration * 400 * 3 * 2) + 2000
    log(f"[{kind}] seeding {sizes[0]} backups and {need_volumes} volumes")
    seed(settings, sizes[0], need_volumes, host)
    settle(settings)
    files = {"backups": workdir / "backups.txt", "volumes": workdir / "volumes.txt"}
    results: dict = {}
    offset = 0
    for size in sizes:
        if size != sizes[0]:
            log(f"[{kind}] growing the backups table to {size}")
            t = time.monotonic()
            top_up(settings, size)
            settle(settings)
            log(f"[{kind}] seeded in {time.monotonic() - t:.0f} s")
        backup_ids(settings, files["backups"])
        pool_ids(settings, files["volumes"])
        offset = 0
        reset_databases()
        stack = Stack(settings, workdir, host).start()
        try:
            raise_quota(stack)
            if size == sizes[0]:  # on an idle worker, before the load leaves a backlog
                results["dispatch_p50_ms"], offset = dispatch_latency(stack, files, offset)
            tag = {1000: "1k", 10000: "10k", 1000000: "1m"}.get(size, str(size))
            scenarios = args.scenarios if size == sizes[0] else ["list", "show"]
            for scenario in scenarios:
                for c in args.concurrency:
                    drain(settings)
                    res = run_load(stack, scenario, c, args.duration, files, offset)
                    if res.get("pool"):
                        offset = res["pool"]["next_offset"]
                    results[f"{scenario}_{tag}_{c}"] = {
                        "rps": round(res["rps"], 1),
                        "p50_ms": res["latency_ms"].get("p50"),
                        "p99_ms": res["latency_ms"].get("p99"),
                        "errors": res["error_count"],
                        "statuses": res.get("statuses")}
        finally:
            stack.stop()
    if small_url and len(sizes) > 1:
        reset_databases()
        log(f"[{kind}] list at {sizes[0]} vs {sizes[-1]} rows, side by side")
        results["scale"] = compare_scale(settings, small_url, redis, args, workdir, files, host)
    reset_databases()
    (results["heartbeat_core_pct"], results["host_choice_ms"],
     results["heartbeat_process_core_pct"]) = heartbeat_cost(settings)
    redis.stop()
    return results


def main() -> None:
    global LOAD
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,1000000",
                        type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--concurrency", default="1,8,32",
                        type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--scenarios", default="show,list,create,mixed",
                        type=lambda v: v.split(","))
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--scale-rounds", type=int, default=14,
                        help="alternating list runs per database for list_1m_over_1k")
    parser.add_argument("--scale-duration", type=float, default=5.0,
                        help="seconds of each of those runs (short runs, many rounds: the "
                             "machine's drift weighs on both databases alike)")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--api-workers", type=int, default=Settings.from_env().api_workers)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    LOAD = find_load_script()
    ensure_wrk()
    base = Path(args.workdir or tempfile.mkdtemp(prefix="bench-api-", dir="/tmp"))
    out: dict = {"cinder_reference": CINDER, "api_workers": args.api_workers}
    try:
        if args.db in ("sqlite", "both"):
            d = base / "sqlite"
            d.mkdir(parents=True, exist_ok=True)
            out["sqlite"] = run_suite("sqlite", f"sqlite:///{d / 'orchestrator.db'}", args, d,
                                      small_url=f"sqlite:///{d / 'small.db'}")
        if args.db in ("postgres", "both"):
            sys.path.insert(0, str(ROOT / "tests"))
            from orch_testlib import ThrowawayPostgres
            from orch_testlib import postgres_admin_dsn
            dsn = postgres_admin_dsn()
            if dsn is None:
                log("PostgreSQL leg skipped: nothing answers on 127.0.0.1:5432")
            else:
                pg, pg_small = ThrowawayPostgres(dsn), ThrowawayPostgres(dsn)
                try:
                    d = base / "postgres"
                    d.mkdir(parents=True, exist_ok=True)
                    out["postgres"] = run_suite("postgres", pg.url, args, d,
                                                small_url=pg_small.url)
                finally:
                    pg.close()
                    pg_small.close()
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    s = out.get("sqlite", {})

    def get(key, field="rps"):
        return (s.get(key) or {}).get(field)
    small = {1000: "1k", 10000: "10k", 1000000: "1m"}.get(min(args.sizes), str(min(args.sizes)))
    scale, pg_scale = s.get("scale") or {}, (out.get("postgres") or {}).get("scale") or {}
    out.update({
        "show_32_rps": get(f"show_{small}_32"), "show_32_p99_ms": get(f"show_{small}_32", "p99_ms"),
        "list_32_rps": get(f"list_{small}_32"), "list_32_p99_ms": get(f"list_{small}_32", "p99_ms"),
        "create_32_rps": get(f"create_{small}_32"), "mixed_32_rps": get(f"mixed_{small}_32"),
        "errors_total": sum(v.get("errors", 0) for db_ in ("sqlite", "postgres")
                            for v in (out.get(db_) or {}).values() if isinstance(v, dict)),
        "list_1m_over_1k": scale.get("ratio"),
        # CPU per list request at 1M rows over 1k (steadier than req/s on a shared machine)
        "list_1m_over_1k_cpu": scale.get("cpu_ratio"),
        "pg_list_1m_over_1k": pg_scale.get("ratio"),
        "pg_list_1m_over_1k_cpu": pg_scale.get("cpu_ratio"),
        "dispatch_p50_ms": s.get("dispatch_p50_ms"),
        "heartbeat_core_pct": s.get("heartbeat_core_pct"),
        "host_choice_ms": s.get("host_choice_ms"),
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
