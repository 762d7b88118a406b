"""`orchestrator backup ...` against a real API and worker: a pseudo-terminal and --json.

The live bar is checked the way an operator sees it: the command runs under a
pseudo-terminal (pexpect), so rich draws its progress display, and what it drew is
read back. The --json mode and every documented exit status are checked too.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import redis
from orch_testlib import ROOT
from orch_testlib import ApiServer
from orch_testlib import Client
from orch_testlib import WorkerProcess
from orch_testlib import fill_random
from orch_testlib import make_settings
from orch_testlib import volume_file
from orch_testlib import wait_for

from orchestrator import tokens
from orchestrator.cli_backup import EXIT_API_ERROR
from orchestrator.cli_backup import EXIT_JOB_ERROR
from orchestrator.cli_backup import EXIT_OK
from orchestrator.cli_backup import EXIT_TIMEOUT
from orchestrator.cli_backup import EXIT_UNREACHABLE
from orchestrator.cli_backup import EXIT_USAGE
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.embedded import free_port
from orchestrator.migrate import upgrade

pexpect = pytest.importorskip("pexpect", reason="pexpect (requirements-dev.txt) is needed "
                                                "to drive the CLI through a pseudo-terminal")

GiB = 1 << 30
# Rich's live bar: "<done>/<total> GB" (DownloadColumn), "NN%", a rate, "ETA h:mm:ss".
_BYTES = re.compile(r"\d+(\.\d+)?/\d+(\.\d+)? [kMG]?B\b")
_PERCENT = re.compile(r"(?<![\d.])(\d{1,3})%")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server):
    url = f"redis://127.0.0.1:{redis_server.port}/14"
    redis.Redis.from_url(url).flushdb()
    settings = make_settings(tmp_path_factory.mktemp("cli"), url)
    upgrade(settings.database_url)
    api = ApiServer(settings).start()
    worker = WorkerProcess(settings, "cli-node", "nova").wait_ready()
    yield settings, api
    worker.stop()
    api.stop()


def _env(api_url: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ORCH_", "OS_", "CINDER_"))}
    env.update({"OS_AUTH_TYPE": "noauth", "OS_USER_ID": "cli", "OS_PROJECT_ID": "cli",
                "OS_ENDPOINT": f"{api_url}/v3", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def cli(api_url: str, *args: str, env: dict | None = None, timeout: float = 120):
    """Run `orchestrator backup ARGS` without a terminal: (exit status, stdout, stderr)."""
    r = subprocess.run([sys.executable, "-m", "orchestrator", "backup", *args], cwd=ROOT,
                       env=env or _env(api_url), capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def cli_json(api_url: str, *args: str, **kw):
    code, out, err = cli(api_url, *args, "--json", **kw)
    assert out.strip(), f"no JSON on stdout (exit {code}); stderr: {err}"
    return code, json.loads(out)


def in_pty(api_url: str, *args: str, timeout: float = 180) -> tuple[int, str]:
    """Run under a pseudo-terminal; (exit status, everything it drew)."""
    child = pexpect.spawn(sys.executable, ["-m", "orchestrator", "backup", *args], cwd=ROOT,
                          env={**_env(api_url), "TERM": "xterm", "COLUMNS": "150"},
                          dimensions=(30, 150), encoding="utf-8", timeout=timeout)
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


def plain(screen: str) -> str:
    """What the terminal showed, without its escape sequences."""
    return _ANSI.sub("", screen)


def _client(api) -> Client:
    return Client(api.url, token="cli:cli")


def _big_volume(settings, api, gib: int = 1) -> str:
    vol = _client(api).create_volume(gib, name=f"big-{time.monotonic_ns()}")
    fill_random(volume_file(settings, vol["id"]), gib * GiB)
    return vol["id"]


def test_create_and_restore_with_a_live_bar_in_a_terminal(stack):
    settings, api = stack
    volume_id = _big_volume(settings, api)
    code, screen = in_pty(api.url, "create", volume_id, "--name", "pty-backup", "--wait")
    assert code == EXIT_OK, screen
    assert "is available" in screen, screen
    # The bar was drawn: bytes done of total, a percent, a rate and the time left.
    text = plain(screen)
    assert _BYTES.search(text), text
    percents = {int(m.group(1)) for m in _PERCENT.finditer(text)}
    assert 100 in percents, text
    assert re.search(r"\d+(\.\d+)? [kMG]?B/s", text) and "ETA" in text, text
    assert "\x1b[" in screen  # a terminal display (cursor movement), not plain lines

    code, screen = in_pty(api.url, "restore", "pty-backup", "--wait")
    assert code == EXIT_OK, screen
    assert "restored from backup" in screen, screen
    assert "backup_restore" in screen or "restoring" in screen, screen


def test_json_mode_lists_shows_creates_and_deletes(stack):
    _, api = stack
    vol = _client(api).create_volume(1, name="json-vol")
    code, created = cli_json(api.url, "create", "json-vol", "--name", "j1", "--wait",
                             "--metadata", "tier=gold")
    assert code == EXIT_OK, created
    assert created["status"] == "available" and created["volume_id"] == vol["id"]
    backup_id = created["id"]

    code, listed = cli_json(api.url, "list", "--volume-id", vol["id"])
    assert code == EXIT_OK and [b["id"] for b in listed] == [backup_id]
    code, shown = cli_json(api.url, "show", "j1")
    assert code == EXIT_OK and shown["id"] == backup_id
    assert shown["metadata"] == {"tier": "gold"}
    assert shown["progress"]["bytes_done"] == shown["progress"]["bytes_total"] == GiB

    code, restored = cli_json(api.url, "restore", backup_id, "--volume", "json-vol", "--wait")
    assert code == EXIT_OK, restored
    assert restored["restore"]["volume_id"] == vol["id"]
    assert restored["volume"]["status"] == "available"

    code, gone = cli_json(api.url, "delete", "j1", "--wait")
    assert code == EXIT_OK and gone == {"deleted": [backup_id]}
    code, err = cli_json(api.url, "show", backup_id)
    assert code == EXIT_API_ERROR and err["error"]["code"] == 404


def test_exit_statuses(stack):
    settings, api = stack
    # A fault from the API: 3, with the API's message.
    code, out, err = cli(api.url, "show", "no-such-backup")
    assert code == EXIT_API_ERROR and "API error 404" in err and out == ""
    # No API there: 4.
    code, body = cli_json(f"http://127.0.0.1:{free_port()}", "list")
    assert code == EXIT_UNREACHABLE and "cannot reach" in body["error"]["message"]
    # noauth without its user and project: 2, naming what to set.
    env = {k: v for k, v in _env(api.url).items() if not k.startswith("OS_USER")}
    env.pop("OS_PROJECT_ID")
    code, out, err = cli(api.url, "list", env=env)
    assert code == EXIT_USAGE and "OS_USER_ID" in err and "OS_PROJECT_ID" in err
    # No credentials at all: 2, naming every way to give them.
    env = {k: v for k, v in env.items() if not k.startswith("OS_AUTH")}
    code, out, err = cli(api.url, "list", env=env)
    assert code == EXIT_USAGE and "OS_TOKEN" in err and "OS_PASSWORD" in err, err
    # The job ends in error (the volume's data is gone): 5, with the backup's reason.
    vol = _client(api).create_volume(1, name="doomed")
    volume_file(settings, vol["id"]).unlink()
    code, body = cli_json(api.url, "create", vol["id"], "--wait")
    assert code == EXIT_JOB_ERROR, body
    assert body["backup"]["status"] == "error" and body["backup"]["fail_reason"]
    # --timeout before the job ends: 6, and the job goes on to the end.
    volume_id = _big_volume(settings, api)
    code, body = cli_json(api.url, "create", volume_id, "--name", "slow", "--wait",
                          "--timeout", "0.3")
    assert code == EXIT_TIMEOUT, body
    assert body["backup"]["status"] == "creating"
    code, body = cli_json(api.url, "watch", "slow", "--timeout", "120")
    assert code == EXIT_OK and body["status"] == "available"


def test_watch_shows_the_running_restores_progress(stack):
    """The detail's progress is the running job's: a restore does not show the create's."""
    settings, api = stack
    volume_id = _big_volume(settings, api)
    code, created = cli_json(api.url, "create", volume_id, "--wait")
    assert code == EXIT_OK
    c = _client(api)
    r = c.post(f"/backups/{created['id']}/restore", {"restore": {"volume_id": volume_id}})
    assert r.status_code == 202, r.text
    seen = wait_for(lambda: (lambda p: p if p.get("operation") == "backup_restore" and
                             p.get("updated_at") else None)(
        c.get(f"/backups/{created['id']}").json()["backup"]["progress"]),
        60, 0.05, "the restore to report progress")
    assert seen["bytes_total"] == GiB and seen["bytes_done"] <= GiB
    code, body = cli_json(api.url, "watch", created["id"], "--timeout", "120")
    assert code == EXIT_OK and body["status"] == "available"
    assert body["progress"]["operation"] is None  # nothing runs any more


def test_token_mode_credentials(tmp_path, redis_server):
    url = f"redis://127.0.0.1:{redis_server.port}/15"
    settings = make_settings(tmp_path / "state", url, auth="token")
    upgrade(settings.database_url)
    with get_database(settings.database_url).scope() as s:
        _, secret = tokens.issue(s, user_id="ops", project_id="tok", roles=["member"],
                                 now=utcnow())
    api = ApiServer(settings).start()
    try:
        base = {k: v for k, v in _env(api.url).items() if not k.startswith("OS_")}
        env = {**base, "OS_ENDPOINT": f"{api.url}/v3", "OS_TOKEN": secret,
               "OS_PROJECT_ID": "tok"}
        code, body = cli_json(api.url, "list", env=env)
        assert (code, body) == (EXIT_OK, [])
        # noauth credentials in token mode are refused by the API (401): 3.
        code, body = cli_json(api.url, "list", env=_env(api.url))
        assert code == EXIT_API_ERROR and body["error"]["code"] == 401
        # The same token given as an option.
        code, body = cli_json(api.url, "list", "--os-token", secret,
                              env={**base, "OS_ENDPOINT": f"{api.url}/v3"})
        assert code == EXIT_OK
    finally:
        api.stop()


def test_text_mode_without_a_terminal(stack):
    """Piped (no terminal, no --json): no live display codes, the outcome on stdout."""
    _, api = stack
    vol = _client(api).create_volume(1, name="piped-vol")
    code, out, err = cli(api.url, "create", "piped-vol", "--name", "piped", "--wait")
    assert code == EXIT_OK, err
    assert "is available" in out and "\x1b[" not in out + err
    code, out, _ = cli(api.url, "list", "--volume-id", vol["id"])
    assert code == EXIT_OK and "piped" in out and out.splitlines()[0].startswith("ID")
    code, out, _ = cli(api.url, "show", "piped")
    assert code == EXIT_OK
    assert re.search(r"^status\s+available$", out, re.M), out
    assert re.search(r"^progress\s+1\.0 GiB of 1\.0 GiB \(100\.0%\)", out, re.M), out
