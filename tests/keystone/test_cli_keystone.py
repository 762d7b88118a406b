"""`orchestrator backup ...` with Keystone password auth, as an operator runs it.

The CLI runs as a subprocess with an openrc's OS_* variables only (no endpoint): it
authenticates with keystoneauth, finds the API in Keystone's catalog (registered by
`orchestrator keystone-register`) and drives a real API behind auth_token and a real
worker. Wrong passwords, an unreachable Keystone and a region without the API end
with the documented exit status and one line, never a traceback or a secret.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from orch_testlib import ROOT
from test_keystone import available_volume

from orchestrator.cli_backup import EXIT_API_ERROR
from orchestrator.cli_backup import EXIT_OK
from orchestrator.cli_backup import EXIT_UNREACHABLE
from orchestrator.cli_backup import EXIT_USAGE
from orchestrator.embedded import free_port

pytestmark = [pytest.mark.slow]


def cli(env: dict, *args: str) -> tuple[int, str, str]:
    """`orchestrator backup ARGS` with this environment: (exit status, stdout, stderr)."""
    r = subprocess.run([sys.executable, "-m", "orchestrator", "backup", *args], cwd=ROOT,
                       env={**env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                       timeout=180)
    return r.returncode, r.stdout, r.stderr


def cli_json(env: dict, *args: str):
    code, out, err = cli(env, *args, "--json")
    assert out.strip(), f"no JSON on stdout (exit {code}); stderr: {err}"
    assert "Traceback" not in err, err
    return code, json.loads(out)


def no_secret(cloud, user: str, *texts: str) -> None:
    """Neither the user's password nor a Keystone (fernet) token is in what was printed."""
    for text in texts:
        assert cloud.os_env(user)["OS_PASSWORD"] not in text
        assert "gAAAAA" not in text  # how every fernet token begins


def test_create_list_show_delete_with_password_auth_from_the_catalog(cloud):
    env = cloud.os_env("alice")
    assert "OS_ENDPOINT" not in env and "CINDER_ENDPOINT" not in env
    volume_id = available_volume(cloud, "alice", "ks-cli-vol")

    code, out, err = cli(env, "create", volume_id, "--name", "ks-cli", "--wait")
    assert code == EXIT_OK, err
    assert "is available" in out, out
    no_secret(cloud, "alice", out, err)

    code, listed = cli_json(env, "list")
    assert code == EXIT_OK, listed
    mine = [b for b in listed if b["name"] == "ks-cli"]
    assert len(mine) == 1 and mine[0]["volume_id"] == volume_id
    backup_id = mine[0]["id"]
    # the API saw alice's project: the member's own cinderclient sees the same backup
    assert cloud.cinder("alice").backups.get(backup_id).status == "available"

    code, out, err = cli(env, "show", "ks-cli")
    assert code == EXIT_OK, err
    assert f"id                     {backup_id}" in out
    assert "status                 available" in out
    no_secret(cloud, "alice", out, err)

    # Another project's user, given as options over alice's environment, sees nothing
    # of it: the options win, and the token is bob's.
    code, body = cli_json(env, "show", backup_id, "--os-username", "bob",
                          "--os-password", "pw-bob", "--os-project-name", "beta")
    assert code == EXIT_API_ERROR and body["error"]["code"] == 404, body

    code, body = cli_json(env, "delete", backup_id, "--wait")
    assert code == EXIT_OK and body == {"deleted": [backup_id]}, body


def test_a_wrong_password_is_one_line_and_exit_3(cloud):
    env = {**cloud.os_env("alice"), "OS_PASSWORD": "not-alices-password"}
    for command in (("list",), ("show", "anything"), ("create", "some-volume")):
        code, out, err = cli(env, *command)
        assert code == EXIT_API_ERROR, (command, out, err)
        assert out == "" and "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Keystone refused the credentials of alice" in lines[0]
        assert "not-alices-password" not in err
    code, body = cli_json(env, "list")
    assert code == EXIT_API_ERROR and "Keystone refused" in body["error"]["message"]
    # an unknown user is the same refusal
    code, _, err = cli({**env, "OS_USERNAME": "nobody"}, "list")
    assert code == EXIT_API_ERROR and "Keystone refused" in err, err


def test_incomplete_or_unreachable_keystone_and_a_region_without_the_api(cloud):
    env = cloud.os_env("alice")
    # an openrc without its password: 2, naming what is missing
    code, _, err = cli({k: v for k, v in env.items() if k != "OS_PASSWORD"}, "list")
    assert code == EXIT_USAGE and "OS_PASSWORD" in err and "Traceback" not in err, err
    # no Keystone there: 4
    code, body = cli_json({**env, "OS_AUTH_URL": f"http://127.0.0.1:{free_port()}/v3"},
                          "list")
    assert code == EXIT_UNREACHABLE and "cannot reach Keystone" in body["error"]["message"]
    # the catalog has no endpoint of the API in that region: 2, saying so
    code, _, err = cli({**env, "OS_REGION_NAME": "RegionTwo"}, "list")
    assert code == EXIT_USAGE and "catalog" in err and "RegionTwo" in err, err
    # ... unless an endpoint is given, which wins over the catalog
    endpoint = f"{cloud.api.url}/v3/{cloud.projects['alpha']}"
    code, _ = cli_json({**env, "OS_REGION_NAME": "RegionTwo"}, "list",
                       "--os-endpoint", endpoint)
    assert code == EXIT_OK


def test_keystone_tokens_and_roles(cloud):
    alpha = cloud.projects["alpha"]
    token = cloud.session("alice").get_token()
    base = {k: v for k, v in cloud.os_env("alice").items()
            if k not in ("OS_USERNAME", "OS_PASSWORD")}
    # OS_TOKEN with OS_AUTH_URL: re-scoped with Keystone, the API found in the catalog
    code, _ = cli_json({**base, "OS_TOKEN": token}, "list")
    assert code == EXIT_OK
    # OS_TOKEN with an endpoint: sent as it is (the admin_token way)
    code, _ = cli_json({**base, "OS_TOKEN": token,
                        "OS_ENDPOINT": f"{cloud.api.url}/v3/{alpha}"}, "list")
    assert code == EXIT_OK
    # a token Keystone does not know is refused by Keystone (3) ...
    code, body = cli_json({**base, "OS_TOKEN": "not-a-token"}, "list")
    assert code == EXIT_API_ERROR and "Keystone refused" in body["error"]["message"]
    # ... and, sent as it is, by the API (3, its 401)
    code, body = cli_json({**base, "OS_TOKEN": "not-a-token", "OS_AUTH_TYPE": "admin_token",
                           "OS_ENDPOINT": f"{cloud.api.url}/v3/{alpha}"}, "list")
    assert code == EXIT_API_ERROR and body["error"]["code"] == 401
    # a reader may list but not create: the API's 403 (3)
    volume_id = available_volume(cloud, "alice", "ks-cli-reader-vol")
    rita = cloud.os_env("rita")
    code, _ = cli_json(rita, "list")
    assert code == EXIT_OK
    code, body = cli_json(rita, "create", volume_id, "--name", "by-rita")
    assert code == EXIT_API_ERROR and body["error"]["code"] == 403, body
