"""How every process logs: JSON lines (or text in development), each carrying the request id.

The request id is the one a client saw in ``x-openstack-request-id``
(``req-<uuid>``). The API binds it for the request; a job created by the
request stores it, and the worker binds it (and the job id) while it runs
that job, so one ``grep req-…`` over the API's and the workers' logs finds
every line of a request, down to its data path. A job created by another job
(a chained delete, the restore after its volume) inherits the id.

``ORCH_LOG_FORMAT=json`` (the default) writes one JSON object per line:
``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``process``,
and ``request_id`` / ``job_id`` when bound, ``exc`` for a traceback.
``text`` writes the same as one readable line.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator

import orjson

from orchestrator.config import without_password

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                         default=None)
JOB_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

_REQUEST_ID_RE = re.compile(r"req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Structured fields a caller may pass with ``extra=`` (the access line's, a job's).
EXTRA_FIELDS = ("method", "path", "route", "status", "duration_ms", "operation", "result")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(job_id)s]: %(message)s"


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


def valid_request_id(value: str | None) -> str | None:
    """``value`` when it is a request id as OpenStack makes them (``req-`` and a lower-case
    UUID), else None: anything else is never used nor echoed."""
    if value and len(value) == 40 and _REQUEST_ID_RE.fullmatch(value):
        return value
    return None


def current_request_id() -> str | None:
    """The request id bound in this context (a request, or the job being run)."""
    return REQUEST_ID.get()


@contextlib.contextmanager
def bound(request_id: str | None = None, job_id: str | None = None) -> Iterator[None]:
    """Bind the request id (and job id) for the lines logged inside the block."""
    tokens = [(REQUEST_ID, REQUEST_ID.set(request_id))]
    if job_id is not None:
        tokens.append((JOB_ID, JOB_ID.set(job_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``job_id`` to every record (``-`` when none is bound)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        if not hasattr(record, "job_id"):
            record.job_id = JOB_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; any URL's password masked on the way out."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": without_password(record.getMessage()),
            "process": record.process,
        }
        rid = getattr(record, "request_id", None)
        if rid and rid != "-":
            entry["request_id"] = rid
        jid = getattr(record, "job_id", None)
        if jid and jid != "-":
            entry["job_id"] = jid
        for name in EXTRA_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = without_password(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = without_password(record.exc_text)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """The text line, passwords masked as in JSON."""

    def format(self, record: logging.LogRecord) -> str:
        return without_password(super().format(record))


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt.lower() == "json" else TextFormatter(TEXT_FORMAT)


def configure(level: str | int = "INFO", fmt: str = "json", stream=None) -> None:
    """Send the root logger's records to ``stream`` (stderr) in ``fmt``; idempotent."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_orchestrator", False):
            root.removeHandler(old)
    handler._orchestrator = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)  # a library's warning is a log line like any other
    # Neither is written on a line: not computing them for every record saves a third of
    # a record's cost (the API writes one per request).
    logging.logThreads = False
    logging.logMultiprocessing = False


def configure_from(settings, level: str | None = None) -> None:
    """``configure`` with the settings' ORCH_LOG_LEVEL and ORCH_LOG_FORMAT."""
    configure(level or settings.log_level, settings.log_format)
