"""The one-machine stack's process supervisor (``orchestrator run``).

Each child (API, storage worker, maintenance worker, beat) runs in its own
session; a child that exits is restarted with backoff while the others keep
serving, and a crash loop is reported and slowed instead of spun. Its whole
process group goes with it first: a storage worker's pool processes must not
outlive it and go on writing. One stack per state directory: a lock the
kernel frees if the holder dies.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

FIRST_DELAY = 1.0
MAX_DELAY = 30.0
# Up this long, a child counts as healthy again: its next exit restarts it at once.
HEALTHY_AFTER = 60.0
CRASH_LOOP = 5  # exits within HEALTHY_AFTER


class StateDirBusy(Exception):
    """Another stack holds the state directory."""


class StateDirLock:
    """An exclusive flock on ``<state>/run.lock`` for the life of the stack."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / "run.lock"
        self._fd: int | None = None

    def acquire(self) -> StateDirLock:
        """:raises StateDirBusy: naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateDirBusy(f"another stack (pid {holder}) is running on "
                               f"{self.path.parent}; stop it first or use another "
                               "ORCH_STATE_DIR") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the kernel drops the lock with the descriptor
            self._fd = None


@dataclass
class Child:
    name: str
    args: list[str]
    log_path: Path
    env: dict | None = None  # None: the supervisor's
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    delay: float = FIRST_DELAY
    exits: deque = field(default_factory=lambda: deque(maxlen=CRASH_LOOP))


class Supervisor:
    def __init__(self, env: dict, report: Callable[[str], None]):
        self.env, self.report = env, report
        self.children: dict[str, Child] = {}

    def add(self, name: str, args: list[str], log_path: Path,
            env: dict | None = None) -> Child:
        child = self.children[name] = Child(name, args, log_path, env)
        self._start(child)
        return child

    def _start(self, child: Child) -> None:
        with open(child.log_path, "ab") as log:  # the child keeps its own descriptor
            child.proc = subprocess.Popen(child.args, env=child.env or self.env, stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        child.started_at = time.monotonic()
        child.restart_at = None

    def pid(self, name: str) -> int:
        return self.children[name].proc.pid

    def poll(self) -> None:
        """Notice exits, restart what is due; call every fraction of a second."""
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._start(child)
                    self.report(f"{child.name} restarted (pid {child.proc.pid})")
                continue
            code = child.proc.poll()
            if code is None:
                continue
            _kill_group(child.proc.pid, signal.SIGKILL)  # what it left running goes too
            if now - child.started_at >= HEALTHY_AFTER:
                child.delay = FIRST_DELAY
            child.exits.append(now)
            loop = len(child.exits) == CRASH_LOOP and now - child.exits[0] < HEALTHY_AFTER
            if loop:
                child.delay = MAX_DELAY
            child.restart_at = now + child.delay
            self.report(f"{child.name} exited with {code}; restarting in {child.delay:.0f} s"
                        + (f" (crash loop: {CRASH_LOOP} exits within {HEALTHY_AFTER:.0f} s; "
                           f"see {child.log_path})" if loop else f"; see {child.log_path}"))
            child.delay = min(MAX_DELAY, child.delay * 2)

    def stop(self, timeout: float = 20.0, order: tuple[str, ...] = ()) -> None:
        """SIGTERM every child (``order`` first), SIGKILL what is left after ``timeout``."""
        names = list(order) + [n for n in self.children if n not in order]
        for name in names:
            proc = self.children[name].proc
            if proc is not None and proc.poll() is None:
                _kill_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in names:
            proc = self.children[name].proc
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
            _kill_group(proc.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
