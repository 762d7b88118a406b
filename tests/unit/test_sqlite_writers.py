"""SQLite writers queue on a lock beside the database: handed on at commit and rollback, and
freed by the kernel when the holder dies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from sqlalchemy import text

from orchestrator.db import Database
from orchestrator.migrate import upgrade


def _db(tmp_path) -> Database:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    upgrade(url)
    return Database(url)


def test_a_writer_waits_for_the_one_inside_and_goes_in_when_it_commits_or_fails(tmp_path):
    db = _db(tmp_path)
    inside, release, entered = threading.Event(), threading.Event(), []

    def holder(fail: bool):
        try:
            with db.scope() as s:
                s.execute(text("UPDATE quota_usages SET in_use = in_use WHERE 1 = 0"))
                inside.set()
                release.wait(10)
                if fail:
                    raise RuntimeError("the holder's transaction fails")
        except RuntimeError:
            pass

    def waiter():
        with db.scope() as s:
            s.execute(text("UPDATE quota_usages SET in_use = in_use WHERE 1 = 0"))
            entered.append(time.monotonic())

    for fail in (False, True):
        inside.clear(), release.clear(), entered.clear()
        a = threading.Thread(target=holder, args=(fail,))
        a.start()
        assert inside.wait(10)
        assert (tmp_path / "o.db.writer").exists()
        b = threading.Thread(target=waiter)
        b.start()
        time.sleep(0.3)
        assert entered == []  # queued behind the holder
        released_at = time.monotonic()
        release.set()
        a.join(10), b.join(10)
        assert len(entered) == 1 and entered[0] - released_at < 1.0


def test_a_writer_killed_inside_its_transaction_does_not_block_the_others(tmp_path):
    db = _db(tmp_path)
    script = (
        "import sys, time\n"
        "from sqlalchemy import text\n"
        "from orchestrator.db import Database\n"
        "db = Database(sys.argv[1])\n"
        "with db.scope() as s:\n"
        "    s.execute(text('UPDATE quota_usages SET in_use = in_use WHERE 1 = 0'))\n"
        "    print('inside', flush=True)\n"
        "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, db.url], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "inside"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        started = time.monotonic()
        with db.scope() as s:
            s.execute(text("UPDATE quota_usages SET in_use = in_use WHERE 1 = 0"))
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
