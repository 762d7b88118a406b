"""A storage node's Prometheus metrics, and its ``/metrics`` and ``/healthcheck`` server.

Jobs run in the prefork pool's child processes, so the counters live in the
worker's ``PROMETHEUS_MULTIPROC_DIR`` (its own directory, emptied when the
worker starts; see ``workers/__main__.py``) and the worker's main process
sums them when scraped on ``ORCH_WORKER_METRICS_PORT`` (default 9106, 0: no
server). Labels are the operation and the result, never an id.

``/healthcheck`` answers as the API's does: 200 when this worker has
finished starting (its queues consumed, its heartbeat written), is not
stopping, and reaches the database and the broker; 503 otherwise, with the
detail of each check as JSON (a worker holds no project data, and its port
is meant for the operator's network only).
"""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

from prometheus_client import Counter
from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy import select

from orchestrator import health
from orchestrator import metrics as control_metrics
from orchestrator.models import Job
from orchestrator.states import JobState

log = logging.getLogger(__name__)

PREFIX = control_metrics.PREFIX
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600,
                    12 * 3600)

JOBS_STARTED = Counter(f"{PREFIX}_worker_jobs_started", "Jobs this worker started, by "
                       "operation.", ["operation"])
JOBS_FINISHED = Counter(f"{PREFIX}_worker_jobs_finished", "Jobs this worker ended, by "
                        "operation and result (succeeded, failed, cancelled).",
                        ["operation", "result"])
JOB_SECONDS = Histogram(f"{PREFIX}_worker_job_duration_seconds", "Time from a job's start "
                        "on this worker to its end, by operation and result.",
                        ["operation", "result"], buckets=DURATION_BUCKETS)
JOB_BYTES = Counter(f"{PREFIX}_worker_job_bytes", "Bytes moved by the jobs this worker ran "
                    "to success: read (from the volume, or from the store by a restore), "
                    "stored (written to the store, compressed) and written (to a volume).",
                    ["operation", "direction"])

# What a successful run half's outcome says it moved: attribute → direction.
_BYTES_OF = (("logical_bytes", "read"), ("stored_bytes", "stored"),
             ("stored_bytes_read", "read"), ("bytes_written", "written"))


def job_started(op: str) -> None:
    JOBS_STARTED.labels(op).inc()


def job_finished(op: str, result: str, seconds: float, outcome=None) -> None:
    """Count a job's end; the bytes of a successful one come from its run half's outcome."""
    JOBS_FINISHED.labels(op, result).inc()
    JOB_SECONDS.labels(op, result).observe(seconds)
    if result != JobState.SUCCEEDED or outcome is None:
        return
    for attribute, direction in _BYTES_OF:
        value = getattr(outcome, attribute, None)
        if isinstance(value, int) and value > 0:
            JOB_BYTES.labels(op, direction).inc(value)


class InFlightCollector(Collector):
    """Jobs running under this worker's leases, from SQL at scrape time (right after a
    restart, and never counting a pool child that died as still busy)."""

    def __init__(self, db, owner: str):
        self.db, self.owner = db, owner

    def describe(self):
        return []

    def collect(self):
        family = GaugeMetricFamily(f"{PREFIX}_worker_jobs_in_flight", "Jobs this worker is "
                                   "running now, by operation.", labels=["operation"])
        try:
            with self.db.scope(write=False) as session:
                for op, n in session.execute(
                        select(Job.op, func.count()).where(Job.state == JobState.RUNNING,
                                                           Job.lease_owner == self.owner)
                        .group_by(Job.op)):
                    family.add_metric([op], n)
        except Exception as exc:  # the scrape still serves the counters
            log.warning("metrics: could not count the jobs in flight: %s", exc)
            return
        yield family


class NodeStatus:
    """What /healthcheck reports beyond the database and broker checks."""

    def __init__(self, nodename: str):
        self.nodename = nodename
        self.ready = False
        self.stopping = False


class MetricsServer:
    """``/metrics`` and ``/healthcheck`` on a loopback (or configured) port, in threads of
    the worker's main process."""

    def __init__(self, settings, db, celery_app, status: NodeStatus, *, host: str,
                 port: int):
        self.settings, self.db, self.celery_app, self.status = settings, db, celery_app, status
        self.collectors = [InFlightCollector(db, status.nodename)]
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, content_type = control_metrics.render(server.collectors)
                    self._send(200, body, content_type)
                elif path == "/healthcheck":
                    code, doc = server.health()
                    self._send(code, json.dumps(doc).encode(), "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):  # scrapes are not news
                return

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                       daemon=True)

    def health(self) -> tuple[int, dict]:
        result = health.run_checks(health.service_checks(self.settings, self.db,
                                                         self.celery_app),
                                   self.settings.health_timeout)
        checks = {"ready": {"ok": self.status.ready and not self.status.stopping,
                            **({"error": "stopping"} if self.status.stopping else
                               {} if self.status.ready else {"error": "starting"})},
                  **result["checks"]}
        ok = all(c["ok"] for c in checks.values())
        return (200 if ok else 503), {"status": "OK" if ok else "FAILED",
                                      "node": self.status.nodename, "ok": ok,
                                      "checks": checks}

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
