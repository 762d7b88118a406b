"""Engines, sessions and transaction scopes.

SQLite is used by the one-machine stack and PostgreSQL by fleets. On SQLite a
write transaction starts with ``BEGIN IMMEDIATE`` so that concurrent API and
worker processes queue on the database lock (bounded by ``busy_timeout``)
instead of failing with "database is locked" when a reader upgrades to a
writer. Reads run in autocommit mode, so WAL readers never wait and never
hold a lock.
"""
from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 60_000


def utcnow() -> dt.datetime:
    """Naive UTC now with microseconds: the format every timestamp column uses."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    path = url.split("sqlite:///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"isolation_level": None, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                      "check_same_thread": False},
        pool_pre_ping=False,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    if immediate:
        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    # Read connections run without BEGIN: each statement reads a consistent WAL
    # snapshot on its own, and a request saves the round trips of BEGIN/ROLLBACK.

    return engine


class Database:
    """The engines and session factories of one database URL."""

    def __init__(self, url: str, *, echo: bool = False):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = _sqlite_engine(url, immediate=False)
            self.write_engine = _sqlite_engine(url, immediate=True)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                                        echo=echo)
            self.write_engine = self.engine
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)

    def session(self, *, write: bool = True) -> Session:
        """A new session; ``write`` chooses the immediate-locking engine on SQLite."""
        return (self._write if write else self._read)()

    @contextlib.contextmanager
    def scope(self, *, write: bool = True) -> Iterator[Session]:
        """Commit on success, roll back on error, always close."""
        session = self.session(write=write)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextlib.contextmanager
    def connect(self):
        """A Core connection in one write transaction: for hot, ORM-free statements."""
        with self.write_engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()


_databases: dict[str, Database] = {}


def get_database(url: str) -> Database:
    """One Database per URL per process (engines are not shared across forks)."""
    db = _databases.get(url)
    if db is None:
        db = _databases[url] = Database(url)
    return db


def reset_databases() -> None:
    """Forget engines, e.g. after fork in a worker child."""
    for db in _databases.values():
        db.dispose()
    _databases.clear()
