"""Authentication: tokens issued by the CLI (token mode) and the noauth rules."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys

import pytest
from orch_testlib import ROOT
from sqlalchemy import select
from sqlalchemy import update
from wire_helpers import assert_fault
from wire_helpers import call

from orchestrator import errors
from orchestrator import tokens
from orchestrator.db import utcnow
from orchestrator.models import ApiToken


def orchestrator_cli(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **stack.settings.as_env()}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=60)


def test_token_lifecycle_through_the_cli(stacks):
    stack = stacks("token", worker=False)
    out = orchestrator_cli(stack, "token", "create", "--project", "tp", "--user", "tu",
                           "--role", "member", "--expires-in", "12h", "--description", "ci",
                           "--json")
    assert out.returncode == 0, out.stderr
    issued = json.loads(out.stdout)
    secret, token_id = issued["token"], issued["id"]
    assert issued["roles"] == ["member"] and issued["expires_at"]

    r = call(stack, "GET", "/backups", token=secret)
    assert r.status_code == 200, r.text
    assert call(stack, "GET", "/tp/backups", token=secret).status_code == 200
    assert_fault(call(stack, "GET", "/other/backups", token=secret), 400, "Malformed request url")

    # Only the SHA-256 is stored; list never shows the secret.
    with stack.db.scope(write=False) as s:
        row = s.get(ApiToken, token_id)
        assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in repr([getattr(row, c.key) for c in row.__mapper__.column_attrs])
    listed = orchestrator_cli(stack, "token", "list", "--project", "tp")
    assert listed.returncode == 0 and token_id in listed.stdout and secret not in listed.stdout
    assert "member" in listed.stdout and "active" in listed.stdout

    revoked = orchestrator_cli(stack, "token", "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    assert_fault(call(stack, "GET", "/backups", token=secret), 401, "invalid, expired or revoked")
    assert token_id not in orchestrator_cli(stack, "token", "list").stdout
    assert "revoked" in orchestrator_cli(stack, "token", "list", "--all").stdout

    bad = orchestrator_cli(stack, "token", "create", "--project", "tp", "--user", "tu",
                           "--role", "owner")
    assert bad.returncode != 0 and "owner" in bad.stderr
    assert orchestrator_cli(stack, "token", "revoke", "no-such-id").returncode == 1


def test_wrong_expired_and_foreign_credentials_are_401(stacks):
    stack = stacks("token", worker=False)
    good = stack.creds("tq")
    assert call(stack, "GET", "/backups", token=good).status_code == 200
    for token in (None, "", "orch_notatoken", "tq:tq", good + "x", good[:-1], "x" * 5000):
        r = call(stack, "GET", "/backups", token=token)
        assert_fault(r, 401)
        assert r.json()["unauthorized"]["code"] == 401
    basic = base64.b64encode(b"tq:secret").decode()
    assert_fault(call(stack, "GET", "/tq/backups", token=None,
                      headers={"Authorization": f"Basic {basic}"}), 401)
    # Expired: move the expiry into the past.
    with stack.db.scope() as s:
        s.execute(update(ApiToken).where(ApiToken.token_hash == tokens.hash_token(good))
                  .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    assert_fault(call(stack, "GET", "/backups", token=good), 401, "expired")


def test_headers_cannot_raise_a_tokens_rights(stacks):
    stack = stacks("token", worker=False)
    member = stack.creds("tr")
    headers = {"X-Roles": "admin", "X-Project-Id": "admin", "X-User-Id": "admin"}
    assert_fault(call(stack, "GET", "/os-services", token=member, headers=headers), 403)
    admin = stack.creds("tr", "admin")
    assert call(stack, "GET", "/os-services", token=admin).status_code == 200


def test_clients_see_401_for_a_bad_token(stacks):
    stack = stacks("token", worker=False)
    from cinderclient import client as cinder_client
    from cinderclient import exceptions
    from keystoneauth1 import session as ksa_session
    from keystoneauth1 import token_endpoint
    sess = ksa_session.Session(auth=token_endpoint.Token(stack.endpoint, "orch_wrong"))
    with pytest.raises(exceptions.Unauthorized):
        cinder_client.Client("3.71", session=sess).backups.list()


def test_noauth_credential_forms(stacks):
    stack = stacks("noauth", worker=False)
    forms = {"demo:demo": ("demo", "demo"), "demo": ("demo", "demo"),
             ":demo": ("demo", "demo"), "u1:demo": ("u1", "demo"), "demo:": ("demo", "demo")}
    for token, (_user, project) in forms.items():
        r = call(stack, "GET", f"/{project}/backups", token=token)
        assert r.status_code == 200, (token, r.text)
    for token in (None, "", ":", ": "):
        assert_fault(call(stack, "GET", "/backups", token=token), 401)
    basic = base64.b64encode(b"demo:whatever").decode()
    r = call(stack, "GET", "/demo/backups", token=None, headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200
    assert_fault(call(stack, "GET", "/backups", token=None,
                      headers={"Authorization": "Basic !!!"}), 401)
    # Admin by name, or by X-Roles; nobody else.
    assert call(stack, "GET", "/os-services", token="admin:demo").status_code == 200
    assert call(stack, "GET", "/os-services", token="demo:admin").status_code == 200
    assert call(stack, "GET", "/os-services", token="demo:demo",
                headers={"X-Roles": "member,admin"}).status_code == 200
    assert_fault(call(stack, "GET", "/os-services", token="demo:demo"), 403)
    # noauth readers (X-Roles: reader) may only read.
    assert_fault(call(stack, "POST", "/volumes", token="demo:demo",
                      headers={"X-Roles": "reader"}, json={"volume": {"size": 1}}), 403)


# ----------------------------------------------------------------------------- unit


def test_issue_validates_and_authenticate_checks_state(db):
    now = utcnow()
    with db.scope() as s:
        for kwargs, needle in (({"roles": ["boss"]}, "boss"), ({"roles": []}, "at least one"),
                               ({"user_id": "a b"}, "user id"),
                               ({"project_id": "backups/x"}, "project id"),
                               ({"expires_at": now - dt.timedelta(seconds=1)}, "future")):
            args = {"user_id": "u", "project_id": "p", "roles": ["member"], **kwargs}
            with pytest.raises(errors.InvalidInput, match=needle):
                tokens.issue(s, now=now, **args)
        row, secret = tokens.issue(s, user_id="u", project_id="p", roles=["Reader", "member"],
                                   now=now, expires_at=now + dt.timedelta(hours=1))
        assert row.role_list == ("member", "reader") and secret.startswith(tokens.PREFIX)
        assert tokens.authenticate(s, secret, now=now).id == row.id
        with pytest.raises(errors.NotAuthenticated):
            tokens.authenticate(s, secret, now=now + dt.timedelta(hours=1))
        tokens.revoke(s, row.id, now=now)
        with pytest.raises(errors.NotAuthenticated):
            tokens.authenticate(s, secret, now=now)
        with pytest.raises(errors.NotFound):
            tokens.revoke(s, "missing", now=now)
        assert s.scalar(select(ApiToken.token_hash)) == tokens.hash_token(secret)
