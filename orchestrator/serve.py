"""How the API is served in production and by `make run`: gunicorn, one command line.

Keep-alive is off by default: with it, a client's long-lived connections stay
on whichever worker process accepted them first, and a load balancer or a
benchmark with a fixed connection pool can end up with one busy process
while the others idle. Without it every request is accepted afresh and the
kernel spreads them over the workers.
"""
from __future__ import annotations

import sys

from orchestrator.config import Settings


def gunicorn_command(settings: Settings, *, workers: int | None = None,
                     bind: str | None = None) -> list[str]:
    """The argv that serves ``orchestrator.wsgi:app`` with these settings."""
    return [sys.executable, "-m", "gunicorn",
            "--workers", str(workers or settings.api_workers),
            "--worker-class", "gthread", "--threads", str(settings.api_threads),
            "--keep-alive", str(settings.api_keepalive),
            "--bind", bind or f"{settings.api_host}:{settings.api_port}",
            "--backlog", "2048", "--graceful-timeout", "10",
            "--access-logfile", "-", "--log-level", "warning",
            "orchestrator.wsgi:app"]
