"""The metrics as Prometheus itself sees them: `promtool check metrics` on what the API and
a worker expose, a real Prometheus server scraping both (with the example alert rules
loaded), and `promtool check rules` / `promtool test rules` on the rules.

Prometheus is Debian's `prometheus` package (which brings promtool). When it is not on
PATH the session tries `apt-get install -y prometheus` once (as root, with apt-get; set
ORCH_TEST_NO_APT=1 to skip that); without it these tests skip, saying so.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest
import requests
from orch_testlib import ROOT
from orch_testlib import ApiProcess
from orch_testlib import volume_file
from orch_testlib import wait_for
from orch_testlib import write_pattern

from orchestrator.embedded import free_port

RULES = ROOT / "contrib" / "prometheus" / "alerts.yml"
MiB = 1024 * 1024


@pytest.fixture(scope="session")
def prom_tools() -> tuple[str, str]:
    """(prometheus, promtool) paths, installing Debian's package once if they are missing."""
    if not (shutil.which("prometheus") and shutil.which("promtool")) and \
            not os.environ.get("ORCH_TEST_NO_APT") and os.geteuid() == 0 and \
            shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=600,
                           capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "prometheus"], env=env,
                           timeout=900, capture_output=True)
        except (OSError, subprocess.TimeoutExpired):
            pass
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prometheus and promtool):
        pytest.skip("prometheus/promtool not found and `apt-get install -y prometheus` "
                    "did not provide them: the Prometheus leg is not run")
    return prometheus, promtool


def promtool_check_metrics(promtool: str, text: str) -> None:
    result = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_valid_and_fire_as_documented(prom_tools):
    _, promtool = prom_tools
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    result = subprocess.run([promtool, "test", "rules", "alerts_test.yml"],
                            cwd=RULES.parent, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_api_and_a_worker(prom_tools, settings, client, worker,
                                                 tmp_path):
    prometheus, promtool = prom_tools
    vol = client.create_volume(size=1)
    write_pattern(volume_file(settings, vol["id"]), 9, [(0, MiB)])
    r = client.post("/backups", {"backup": {"volume_id": vol["id"]}})
    assert client.wait("backup", r.json()["backup"]["id"], {"available", "error"})[
        "status"] == "available"

    api = ApiProcess(settings, workers=2).wait_ready()
    prom = None
    try:
        api_port = api.port
        worker_url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
        assert requests.get(api.url + "/v3/", timeout=10).status_code == 200
        promtool_check_metrics(promtool, requests.get(api.url + "/metrics", timeout=10).text)
        promtool_check_metrics(promtool, requests.get(worker_url, timeout=10).text)

        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES}
scrape_configs:
  - job_name: orchestrator-api
    static_configs:
      - targets: ["127.0.0.1:{api_port}"]
  - job_name: orchestrator-worker
    static_configs:
      - targets: ["127.0.0.1:{worker.metrics_port}"]
""")
        log = open(tmp_path / "prometheus.log", "ab")  # noqa: SIM115 (the child keeps it)
        prom = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"

        def targets_up():
            if prom.poll() is not None:
                raise AssertionError((tmp_path / "prometheus.log").read_text()[-3000:])
            try:
                got = requests.get(base + "/api/v1/targets", timeout=5).json()
            except (requests.ConnectionError, ValueError):
                return None
            active = got["data"]["activeTargets"]
            healthy = {t["labels"]["job"] for t in active if t["health"] == "up"}
            return healthy >= {"orchestrator-api", "orchestrator-worker"} and active
        active = wait_for(targets_up, timeout=60, interval=0.5, what="both targets up")
        assert all(not t["lastError"] for t in active), active

        def query(expr: str):
            got = requests.get(base + "/api/v1/query", params={"query": expr}, timeout=5).json()
            assert got["status"] == "success", got
            return got["data"]["result"]

        def value(expr: str) -> float | None:
            result = query(expr)
            return float(result[0]["value"][1]) if result else None

        wait_for(lambda: value('orchestrator_backups{status="available"}') is not None,
                 timeout=30, what="the state gauges in Prometheus")
        assert value('orchestrator_backups{status="available"}') == 1
        assert value('orchestrator_services{binary="cinder-backup",state="up"}') == 1
        assert value('orchestrator_worker_jobs_finished_total{operation="backup_create",'
                     'result="succeeded"}') == 1
        assert value('sum(orchestrator_api_requests_total{route=~"/v3/?"})') >= 1
        assert value('orchestrator_state_up{source="broker"}') == 1
        # The example rules loaded into a real server, and none fires on a healthy stack.
        rules = requests.get(base + "/api/v1/rules", timeout=5).json()["data"]["groups"]
        names = {rule["name"] for group in rules for rule in group["rules"]}
        assert {"VolumeWithoutRecentBackup", "BackupJobsFailing", "BackupHostDown"} <= names
        assert all(rule["health"] != "err" for group in rules for rule in group["rules"])
        firing = requests.get(base + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        assert not [a for a in firing if a["state"] == "firing"], firing
        # No label names a project, a volume or a backup.
        series = requests.get(base + "/api/v1/series", params={"match[]": '{__name__=~"orc'
                              'hestrator_.+"}'}, timeout=5).json()["data"]
        assert series and not any(vol["id"] in str(s) or "demo" in str(s) for s in series)
    finally:
        if prom is not None and prom.poll() is None:
            os.killpg(prom.pid, signal.SIGTERM)
            try:
                prom.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(prom.pid, signal.SIGKILL)
        api.stop()
