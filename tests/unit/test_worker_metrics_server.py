"""A worker's /healthcheck follows its readiness; its /metrics serves what its jobs counted."""
from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.tasks import make_celery
from workers import metrics


def test_worker_health_is_503_until_ready_and_once_stopping(settings, db):
    status = metrics.NodeStatus("worker@unit")
    server = metrics.MetricsServer(settings, db, make_celery(settings), status,
                                   host="127.0.0.1", port=0).start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        r = requests.get(url + "/healthcheck", timeout=10)
        assert r.status_code == 503
        assert r.json()["checks"]["ready"] == {"ok": False, "error": "starting"}
        assert r.json()["checks"]["database"]["ok"] and r.json()["checks"]["broker"]["ok"]
        status.ready = True
        r = requests.get(url + "/healthcheck", timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "OK"
        status.stopping = True
        r = requests.get(url + "/healthcheck", timeout=10)
        assert r.status_code == 503 and r.json()["checks"]["ready"]["error"] == "stopping"
        assert requests.get(url + "/nothing", timeout=10).status_code == 404
    finally:
        server.stop()


def test_job_metrics_count_by_operation_and_result(settings, db):
    class Outcome:
        logical_bytes, stored_bytes = 4096, 1000

    def value(name: str, **labels) -> float:
        text = requests.get(url + "/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return s.value
        return 0.0

    server = metrics.MetricsServer(settings, db, make_celery(settings),
                                   metrics.NodeStatus("worker@unit"), host="127.0.0.1",
                                   port=0).start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        op = "backup_verify"  # nothing else in this process runs one
        before = value("orchestrator_worker_job_bytes_total", operation=op, direction="read")
        metrics.job_started(op)
        metrics.job_finished(op, "succeeded", 2.0, Outcome())
        metrics.job_finished(op, "failed", 0.5, Outcome())  # a failure moves no bytes
        assert value("orchestrator_worker_jobs_finished_total", operation=op,
                     result="failed") >= 1
        assert value("orchestrator_worker_job_bytes_total", operation=op,
                     direction="read") - before == 4096
        assert value("orchestrator_worker_job_duration_seconds_bucket", operation=op,
                     result="succeeded", le="2.5") >= 1
    finally:
        server.stop()
