"""Engines, sessions and transaction scopes.

SQLite is used by the one-machine stack and PostgreSQL by fleets. On SQLite a
write transaction starts with ``BEGIN IMMEDIATE`` so that concurrent API and
worker processes queue for the database lock (bounded by ``busy_timeout``)
instead of failing with "database is locked" when a reader upgrades to a
writer; they queue on a lock file first (``_writers_queue``). Reads run in
autocommit mode, so WAL readers never wait and never hold a lock.

On PostgreSQL reads run in autocommit mode too (no BEGIN/ROLLBACK round trips
around a request's SELECTs), and a pooled connection is pinged only when it
sat idle for a while: a connection in steady use proves itself with every
statement, and one that broke anyway fails its statement, which invalidates
the pool (the request gets a 503 and the next one a fresh connection).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 60_000
PING_AFTER_IDLE_S = 5.0


def utcnow() -> dt.datetime:
    """Naive UTC now with microseconds: the format every timestamp column uses."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


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
        _writers_queue(engine, f"{path}.writer" if path and path != ":memory:" else None)
    # Read connections run without BEGIN: each statement reads a consistent WAL
    # snapshot on its own, and a request saves the round trips of BEGIN/ROLLBACK.

    return engine


def _writers_queue(engine: Engine, lock_path: str | None) -> None:
    """Write transactions with ``BEGIN IMMEDIATE``, writers of every process in one queue.

    SQLite lets one writer in. A ``BEGIN IMMEDIATE`` that finds the database locked
    sleeps in SQLite's busy handler (1, 2, 5, … up to 100 ms a try) and tries again:
    with a dozen API threads and a worker waiting, the lock is mostly taken by
    whoever happens to be awake when it frees, and an unlucky create waited almost
    a second. Writers first take an exclusive ``flock`` on a file beside the
    database, each connection on its own descriptor: the kernel wakes a waiter the
    moment the lock is given back (after COMMIT or ROLLBACK, the pool's rollback on
    return included), and releases it if its process dies. SQLite's own lock and
    busy timeout still guard the database against writers that do not queue here.
    """
    @event.listens_for(engine, "connect")
    def _open_turn(dbapi_conn, record):
        if lock_path is not None:
            record.info["turn_fd"] = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)

    @event.listens_for(engine, "close")
    def _close_turn(dbapi_conn, record):
        fd = record.info.pop("turn_fd", None)
        if fd is not None:
            os.close(fd)  # gives the lock back too

    def _info_of(connection):
        try:  # a pool's connection: its record's info; the dialect's first-connect probe: none
            return connection.info
        except (AttributeError, NotImplementedError):
            return None

    def _give_back(info) -> None:
        if info is not None and info.pop("turn_held", False):
            fcntl.flock(info["turn_fd"], fcntl.LOCK_UN)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        info = conn.connection.info
        fd = info.get("turn_fd")
        if fd is not None and not info.get("turn_held"):
            fcntl.flock(fd, fcntl.LOCK_EX)
            info["turn_held"] = True
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _give_back(info)
            raise

    def _then_give_back(end):  # the dialect's COMMIT or ROLLBACK, then the turn
        def call(dbapi_connection):
            try:
                end(dbapi_connection)
            finally:
                _give_back(_info_of(dbapi_connection))
        return call

    dialect = engine.dialect
    dialect.do_commit = _then_give_back(dialect.do_commit)
    dialect.do_rollback = _then_give_back(dialect.do_rollback)


def _server_engine(url: str, *, echo: bool) -> Engine:
    """A pooled engine for a database server, pinging connections that sat idle."""
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_recycle=3600, echo=echo)
    _ping_after_idle(engine)
    return engine


def _beat_engine(url: str) -> Engine:
    """PostgreSQL connections for heartbeats: each beat is one autocommitted UPDATE.

    Autocommit saves the BEGIN and COMMIT round trips; ``synchronous_commit=off``
    (for these connections only) saves the WAL flush wait, most of a small
    commit's cost. A beat lost in a database crash is replaced by the next one.
    No ping on checkout: a beat every few seconds would ping every time, and a
    broken connection fails its beat, which the pool then replaces.
    """
    return create_engine(url, pool_size=1, max_overflow=2, pool_recycle=3600,
                         isolation_level="AUTOCOMMIT",
                         connect_args={"options": "-c synchronous_commit=off"})


def _ping_after_idle(engine: Engine) -> None:

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn, record, _proxy):
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return
        try:
            cur = dbapi_conn.cursor()
            try:
                cur.execute("SELECT 1")
            finally:
                cur.close()
            if not getattr(dbapi_conn, "autocommit", True):
                dbapi_conn.rollback()
        except Exception as exc:  # the pool discards this connection and takes another
            raise sa_exc.DisconnectionError(str(exc)) from exc


def dialect_of(bind):
    """The SQLAlchemy dialect behind a Session or a Core Connection."""
    return bind.get_bind().dialect if isinstance(bind, Session) else bind.dialect


class Database:
    """The engines and session factories of one database URL."""

    def __init__(self, url: str, *, echo: bool = False):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = _sqlite_engine(url, immediate=False)
            self.write_engine = _sqlite_engine(url, immediate=True)
        else:
            self.write_engine = _server_engine(url, echo=echo)
            # Same pool; reads check connections out in autocommit mode.
            self.engine = self.write_engine.execution_options(isolation_level="AUTOCOMMIT")
        self._beats: Engine | None = None
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

    @contextlib.contextmanager
    def beat(self):
        """A Core connection for one heartbeat (see _beat_engine; SQLite: a write transaction)."""
        if self.is_sqlite:
            with self.connect() as conn:
                yield conn
            return
        if self._beats is None:
            self._beats = _beat_engine(self.url)
        with self._beats.connect() as conn:
            yield conn

    def dispose(self) -> None:
        if self._beats is not None:
            self._beats.dispose()
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
