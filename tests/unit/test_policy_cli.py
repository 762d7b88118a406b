"""`orchestrator backup-policy ...` against the real API over HTTP."""
from __future__ import annotations

import json

from click.testing import CliRunner

from orchestrator import hosts
from orchestrator.cli import main
from orchestrator.db import utcnow
from orchestrator.models import Volume


def _volume(db) -> str:
    with db.scope() as s:
        vol = Volume(project_id="demo", user_id="demo", host="node1", availability_zone="nova",
                     size=1, status="available", display_name="v", created_at=utcnow())
        s.add(vol)
        s.flush()
        return vol.id


def _cli(api_server, *args, token="demo:demo"):
    result = CliRunner().invoke(main, ["backup-policy", "--endpoint", f"{api_server.url}/v3",
                                       "--token", token, *args])
    return result


def test_every_command_against_the_api(api_server, db):
    with db.scope() as s:
        hosts.record_heartbeat(s, "node1", [hosts.BACKUP_BINARY], zone="nova", now=utcnow())
    vol = _volume(db)
    r = _cli(api_server, "create", "--name", "hourly", "--interval", "1h", "--volume", vol,
             "--keep-last", "3", "--keep-daily", "7", "--keep-within", "2d", "--skip-missed")
    assert r.exit_code == 0, r.output
    created = json.loads(r.output)
    pid = created["id"]
    assert created["schedule"] == {"interval_seconds": 3600, "timezone": "UTC"}
    assert created["retention"] == {"keep_last": 3, "keep_daily": 7,
                                    "keep_within_seconds": 172800}
    assert created["run_missed"] is False and created["volume_ids"] == [vol]
    r = _cli(api_server, "list")
    assert r.exit_code == 0 and pid in r.output and "every 3600 s" in r.output
    r = _cli(api_server, "update", pid, "--cron", "0 3 * * 1", "--timezone", "Asia/Tokyo",
             "--disabled")
    assert r.exit_code == 0, r.output
    updated = json.loads(r.output)
    assert updated["schedule"] == {"cron": "0 3 * * 1", "timezone": "Asia/Tokyo"}
    assert updated["enabled"] is False and updated["next_run_at"] is None
    assert json.loads(_cli(api_server, "show", pid).output)["name"] == "hourly"
    r = _cli(api_server, "run", pid)
    assert r.exit_code == 0, r.output
    run = json.loads(r.output)
    assert run["kind"] == "manual" and list(run["backup_ids"]) == [vol]
    r = _cli(api_server, "prune", pid, "--dry-run")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    assert plan["delete"] == [] and plan["keep"][0]["rules"] == ["in_progress"]
    r = _cli(api_server, "delete", pid)
    assert r.exit_code == 0 and f"deleted {pid}" in r.output
    r = _cli(api_server, "show", pid)
    assert r.exit_code == 1 and f"404: Backup policy {pid} could not be found." in r.output


def test_errors_are_the_api_faults_and_usage_errors(api_server, db):
    vol = _volume(db)
    r = _cli(api_server, "create", "--cron", "99 * * * *", "--volume", vol)
    assert r.exit_code == 1 and "400: Invalid input received: invalid cron" in r.output
    r = _cli(api_server, "create", "--volume", vol)
    assert r.exit_code == 2 and "needs --cron or --interval" in r.output
    r = _cli(api_server, "create", "--interval", "soon", "--volume", vol)
    assert r.exit_code == 2 and "not a duration" in r.output
    r = _cli(api_server, "list", token="someone:else")
    assert r.exit_code == 0 and "hourly" not in r.output
    r = CliRunner().invoke(main, ["backup-policy", "--endpoint", "http://127.0.0.1:9/v3",
                                  "list"])
    assert r.exit_code == 1 and "cannot reach" in r.output
