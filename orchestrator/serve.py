"""How the API is served in production and by `make run`: granian, one command line.

Granian parses HTTP and manages connections in Rust and hands each request to
the WSGI application on a pool of Python threads per worker process. Against
gunicorn's gthread workers (HTTP parsed in Python, one hand-off per request
through a futures pool) the same application served about 1.5 times the shows
and 1.3 times the list pages and creates per second on this 2-core machine:
the server's own share of a cheap request fell from ~0.35 ms of CPU to almost
nothing (bench/api.py; README, control plane).

The process model is the one operators know from gunicorn: a master that
starts ``ORCH_API_WORKERS`` worker processes (respawned if one dies), each with
``ORCH_API_THREADS`` threads running the Flask app; SIGTERM stops them
gracefully, waiting at most ``GRACEFUL_S`` for requests in flight.
"""
from __future__ import annotations

import sys

from orchestrator import metrics
from orchestrator.config import Settings

GRACEFUL_S = 10
ACCESS_FORMAT = ('%(addr)s - - [%(time)s] "%(method)s %(path)s %(protocol)s" %(status)d '
                 '%(dt_ms).3fms')


def _split_bind(bind: str) -> tuple[str, str]:
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), port


def api_command(settings: Settings, *, workers: int | None = None,
                bind: str | None = None) -> list[str]:
    """The argv that serves ``orchestrator.wsgi:app`` with these settings."""
    host, port = (_split_bind(bind) if bind else (settings.api_host, str(settings.api_port)))
    return [sys.executable, "-m", "granian", "--interface", "wsgi",
            "--host", host, "--port", port,
            "--workers", str(workers or settings.api_workers),
            "--blocking-threads", str(settings.api_threads),
            "--http", "1", "--no-ws",
            "--http1-keep-alive" if settings.api_keepalive else "--no-http1-keep-alive",
            "--backlog", "2048",
            "--respawn-failed-workers", "--workers-kill-timeout", str(GRACEFUL_S),
            "--log-level", "warning",
            # JSON: the application writes the access line (with the request id); text:
            # granian's own line.
            *(["--access-log", "--access-log-fmt", ACCESS_FORMAT]
              if settings.log_format == "text" else []),
            *_tls_args(settings), "orchestrator.wsgi:app"]


def _tls_args(settings: Settings) -> list[str]:
    """granian's TLS options when ORCH_API_TLS_CERT/KEY are set (else none: plain HTTP)."""
    if not settings.api_tls_cert:
        return []
    return ["--ssl-certificate", settings.api_tls_cert, "--ssl-keyfile", settings.api_tls_key]


def api_environment(settings: Settings, *, bind: str | None = None) -> dict[str, str]:
    """What the API's processes need in their environment besides the settings: a fresh
    PROMETHEUS_MULTIPROC_DIR of their own, so /metrics sums every granian worker."""
    port = _split_bind(bind)[1] if bind else str(settings.api_port)
    path = metrics.fresh_multiproc_dir(metrics.multiproc_dir(settings, f"api-{port}"))
    return {metrics.MULTIPROC_ENV: str(path)}


def without_metrics_dir(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a process that must choose its own metrics directory."""
    return {k: v for k, v in env.items() if k != metrics.MULTIPROC_ENV and
            k != metrics.MULTIPROC_ENV.lower()}


def worker_environment(settings: Settings, nodename: str) -> dict[str, str]:
    """A storage worker's metrics directory, as it would choose it itself (which saves it
    running itself a second time to pick it up)."""
    return {metrics.MULTIPROC_ENV: str(metrics.multiproc_dir(settings, nodename))}
