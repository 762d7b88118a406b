"""Health probes, as oslo.middleware's healthcheck answers them: the database and the broker.

Each probe runs in its own thread and gets ``ORCH_HEALTH_TIMEOUT`` seconds: a
database or broker that hangs makes the check fail in bounded time instead of
hanging the load balancer's probe. The result names each check, whether it
passed, how long it took and, when it failed, why (passwords masked); only
admins see that detail.
"""
from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable

from sqlalchemy import text

from orchestrator.config import without_password

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")


def database_probe(db) -> Callable[[], None]:
    def probe() -> None:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    return probe


def broker_probe(celery_app, timeout: float) -> Callable[[], None]:
    def probe() -> None:
        with celery_app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                   timeout=timeout)
            conn.default_channel  # noqa: B018  (opening a channel talks to the broker)
    return probe


def run_checks(checks: dict[str, Callable[[], None]], timeout: float) -> dict:
    """``{"ok": bool, "checks": {name: {"ok", "seconds", "error"?}}}``."""
    started = time.monotonic()
    futures = {name: _POOL.submit(_timed, probe) for name, probe in checks.items()}
    results: dict[str, dict] = {}
    for name, future in futures.items():
        left = max(0.0, timeout - (time.monotonic() - started))
        try:
            results[name] = future.result(timeout=left)
        except concurrent.futures.TimeoutError:
            results[name] = {"ok": False, "seconds": round(timeout, 3),
                             "error": f"no answer within {timeout:g} s"}
    return {"ok": all(r["ok"] for r in results.values()), "checks": results}


def _timed(probe: Callable[[], None]) -> dict:
    started = time.monotonic()
    try:
        probe()
    except Exception as exc:
        message = without_password(f"{exc.__class__.__name__}: {exc}".strip())
        return {"ok": False, "seconds": round(time.monotonic() - started, 3),
                "error": " ".join(message.split())[:300]}
    return {"ok": True, "seconds": round(time.monotonic() - started, 3)}


def service_checks(settings, db, celery_app) -> dict[str, Callable[[], None]]:
    """The checks of an API or a worker: its database and its broker."""
    return {"database": database_probe(db),
            "broker": broker_probe(celery_app, settings.health_timeout)}
