"""Backup policies in real time: real Celery beat and maintenance workers drive the tick,
a real storage worker makes the backups.

A policy on a 2-second interval runs again and again under two beats and two
maintenance workers and prunes to its retention: one backup per due time, no due time
skipped. A maintenance worker killed in the middle of a tick (after claiming a due time,
before committing) and a beat killed and restarted neither skip nor double a run.
"""
from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from orch_testlib import ApiServer
from orch_testlib import BeatProcess
from orch_testlib import Client
from orch_testlib import WorkerProcess
from orch_testlib import make_settings
from orch_testlib import wait_for
from sqlalchemy import select

from orchestrator.db import get_database
from orchestrator.migrate import upgrade
from orchestrator.models import Backup
from orchestrator.models import BackupPolicy
from orchestrator.models import BackupPolicyRun

ROOT = Path(__file__).resolve().parents[2]


class SecondBeat:
    """Another beat with its own schedule file: two schedulers sending the same ticks."""

    def __init__(self, settings):
        env = {**os.environ, **settings.as_env()}
        state = Path(settings.state_dir)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "orchestrator.celery_app", "beat", "-s",
             str(state / "beat-schedule-2"), "-l", "INFO"], cwd=str(ROOT), env=env,
            stdout=open(state / "beat-2.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


class Stack:
    def __init__(self, tmp_path: Path, redis_server, db_index: int, **overrides):
        url = f"redis://127.0.0.1:{redis_server.port}/{db_index}"
        redis.Redis.from_url(url).flushdb()
        self.settings = make_settings(tmp_path / "state", url, policy_tick_interval=0.5,
                                      quota_backups=-1, quota_backup_gigabytes=-1,
                                      backup_compression="zlib", **overrides)
        upgrade(self.settings.database_url)
        self.db = get_database(self.settings.database_url)
        self.parts: list = []
        self.api = self.add(ApiServer(self.settings).start())
        self.client = Client(self.api.url)
        self.node = self.add(WorkerProcess(self.settings, "node-p", "nova").wait_ready())

    def add(self, part):
        self.parts.append(part)
        return part

    def maintenance(self, name: str = "control") -> WorkerProcess:
        return self.add(WorkerProcess(self.settings, name, "nova", maintenance=True)
                        .wait_ready())

    def beat(self) -> BeatProcess:
        return self.add(BeatProcess(self.settings))

    def close(self) -> None:
        for part in reversed(self.parts):
            part.stop()

    def policy(self, volume_ids: list[str], interval: int, **extra) -> str:
        r = self.client.post("/backup-policies", {"backup_policy": {
            "name": "rt", "schedule": {"interval_seconds": interval},
            "volume_ids": volume_ids, **extra}})
        assert r.status_code == 201, r.text
        return r.json()["backup_policy"]["id"]

    def runs(self, policy_id: str) -> list[BackupPolicyRun]:
        with self.db.scope(write=False) as s:
            return list(s.scalars(select(BackupPolicyRun).where(
                BackupPolicyRun.policy_id == policy_id).order_by(BackupPolicyRun.due_at)))

    def backups(self, policy_id: str, *, with_deleted: bool = True) -> list[Backup]:
        with self.db.scope(write=False) as s:
            q = select(Backup).where(Backup.policy_id == policy_id)
            if not with_deleted:
                q = q.where(Backup.deleted.is_(False))
            return list(s.scalars(q.order_by(Backup.created_at)))

    def next_run(self, policy_id: str) -> dt.datetime | None:
        with self.db.scope(write=False) as s:
            return s.get(BackupPolicy, policy_id).next_run_at


def assert_history(stack: Stack, policy_id: str, volumes: list[str], interval: int) -> None:
    """No due time doubled or skipped, and one backup per volume per run that made one."""
    runs = [r for r in stack.runs(policy_id) if r.kind != "manual"]
    dues = [r.due_at for r in runs]
    assert len(dues) == len(set(dues)), dues
    step = dt.timedelta(seconds=interval)
    for a, b in itertools.pairwise(runs):
        gap = b.due_at - a.due_at
        assert gap % step == dt.timedelta(0), (a.due_at, b.due_at)
        # Every due time between two runs was coalesced into the first: none skipped.
        assert gap // step == 1 + a.coalesced, (a.due_at, a.coalesced, b.due_at)
    made = [bid for r in runs for bid in r.backup_ids.values()]
    assert len(made) == len(set(made))
    for r in runs:
        assert set(r.backup_ids) | set(r.errors) == set(volumes), (r.backup_ids, r.errors)
    backups = stack.backups(policy_id)
    assert sorted(b.id for b in backups) == sorted(made)  # nothing created twice or outside


@pytest.fixture
def stack(tmp_path, redis_server):
    s = Stack(tmp_path, redis_server, 4)
    yield s
    s.close()


def test_a_short_interval_policy_runs_prunes_and_keeps_its_history(stack):
    stack.maintenance("control-a")
    stack.maintenance("control-b")
    stack.beat()
    stack.add(SecondBeat(stack.settings))
    vols = [stack.client.create_volume(1)["id"] for _ in range(2)]
    pid = stack.policy(vols, 2, retention={"keep_last": 2})
    wait_for(lambda: sum(1 for r in stack.runs(pid) if r.backup_ids) >= 5, 45, 0.2,
             "five runs that made backups")
    r = stack.client.put(f"/backup-policies/{pid}", {"backup_policy": {"enabled": False}})
    assert r.status_code == 200
    time.sleep(1.0)  # a tick that read the policy before the update ends

    def settled():
        live = stack.backups(pid, with_deleted=False)
        return all(b.status in ("available", "error") for b in live) and live

    wait_for(settled, 30, 0.2, "the last backups to finish")
    assert_history(stack, pid, vols, 2)
    runs = stack.runs(pid)
    assert all(r.kind == "scheduled" for r in runs), [(r.kind, r.reason) for r in runs]
    # Prune after each run: per volume at most keep_last available backups plus the one
    # that was still being made when the last prune ran.
    for vid in vols:
        live = [b for b in stack.backups(pid, with_deleted=False) if b.volume_id == vid and
                b.status == "available"]
        assert 2 <= len(live) <= 3, [(b.id, b.status) for b in live]
        deleted = [b for b in stack.backups(pid) if b.volume_id == vid and b.deleted]
        assert deleted, "prune deleted nothing"
    shown = stack.client.get(f"/backup-policies/{pid}").json()["backup_policy"]
    assert shown["last_prune"]["deleted"] >= 0 and set(shown["last_success"]) == set(vols)
    newest = max(stack.backups(pid, with_deleted=False), key=lambda b: b.created_at)
    detail = stack.client.get(f"/backups/{newest.id}").json()["backup"]
    assert detail["policy_id"] == pid


@pytest.mark.slow
def test_killing_maintenance_mid_tick_or_beat_neither_skips_nor_doubles(tmp_path,
                                                                       redis_server):
    stack = Stack(tmp_path, redis_server, 5, policy_tick_pause=2.0)
    try:
        first = stack.maintenance("control-a")
        beat = stack.beat()
        vol = stack.client.create_volume(1)["id"]
        pid = stack.policy([vol], 4, start_window_seconds=120)
        due = stack.next_run(pid)
        wait_for(lambda: "due time" in first.log and "claimed" in first.log, 30, 0.05,
                 "a tick to claim the first due time")
        first.kill()  # mid-tick: claimed, not committed
        assert stack.runs(pid) == [] and stack.backups(pid) == []
        assert stack.next_run(pid) == due  # the claim rolled back with the run
        stack.maintenance("control-b")
        wait_for(lambda: stack.runs(pid), 30, 0.2, "the due time to run after the restart")
        assert [r.due_at for r in stack.runs(pid)] == [due]
        # Kill beat between ticks, leave it down past a due time, start it again.
        beat.proc.send_signal(signal.SIGKILL)
        beat.proc.wait(10)
        time.sleep(10)  # over two intervals, beyond the queued ticks' 2-second expiry
        stack.beat()
        wait_for(lambda: len(stack.runs(pid)) >= 3, 40, 0.2, "runs after beat came back")
        stack.client.put(f"/backup-policies/{pid}", {"backup_policy": {"enabled": False}})
        time.sleep(3)  # a paused tick that claimed before the update commits
        assert_history(stack, pid, [vol], 4)
        runs = stack.runs(pid)
        assert any(r.coalesced for r in runs), [(r.due_at, r.coalesced) for r in runs]
        # Each run made its backup, or was refused as an API create would be while the
        # previous backup of the volume was still being made.
        assert runs[0].backup_ids and all(
            r.backup_ids or "backing-up" in r.errors[vol] for r in runs), \
            [(r.due_at, r.errors) for r in runs]
    finally:
        stack.close()
