"""The request's unit of work: a lazy session (or read-only connection), commit then
dispatch of the jobs it made, and closing both when the request ends."""
from __future__ import annotations

from flask import Flask
from flask import current_app
from flask import g
from sqlalchemy.orm import Session

from orchestrator.dispatch import dispatch


def session(write: bool = False) -> Session:
    """The request's session, opened lazily; writes use the immediate-lock engine."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["orch_db"].session(write=write)
        g.db_session_write = write
    return g.db_session


def reader():
    """A read-only Core connection for the request (cheaper than an ORM session)."""
    if "db_reader" not in g:
        g.db_reader = current_app.extensions["orch_db"].engine.connect()
    return g.db_reader


def commit_and_dispatch(jobs) -> None:
    """Commit the request's transaction, then hand its jobs to the broker.

    :raises BrokerUnavailable: the request's writes have been undone.
    """
    g.db_session.commit()
    if jobs:
        dispatch(current_app.extensions["orch_db"], current_app.extensions["orch_publisher"],
                 jobs, undo_on_failure=True)


def init_app(app: Flask) -> None:
    """Close the request's connection and session (rolled back after a failure)."""

    @app.teardown_request
    def _close(exc):
        conn = g.pop("db_reader", None)
        if conn is not None:
            conn.close()
        s = g.pop("db_session", None)
        if s is not None:
            if exc is not None:
                s.rollback()
            s.close()
