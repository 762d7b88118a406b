"""Policy as data: oslo.policy defaults from RULES, operator files, Keystone contexts."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from flask import Flask
from flask import request

from orchestrator import errors
from orchestrator import policy
from orchestrator.config import Settings
from orchestrator.context import RequestContext
from orchestrator.http.auth import keystone_context

MEMBER = RequestContext("u", "alpha", roles=("member",))
READER = RequestContext("r", "alpha", roles=("reader",))
ADMIN = RequestContext("admin", "alpha", is_admin=True, roles=("member",))


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("{}\n")
    policy.configure(str(path))
    yield path
    policy.configure(None)


def _rewrite(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000,) * 2)


def test_every_rule_has_a_default_of_its_persona():
    defaults = {r.name: r.check_str for r in policy.list_rules()}
    assert set(policy.RULES) <= set(defaults)
    for name, role in policy.RULES.items():
        assert defaults[name] == policy.CHECKS[role], name
    for name in ("context_is_admin", "admin_api", "xena_system_admin_or_project_reader",
                 "xena_system_admin_or_project_member"):
        assert name in defaults


def test_the_defaults_answer_as_the_roles_say():
    by_role = {role: {n for n, r in policy.RULES.items() if r is role} for role in policy.Role}
    assert {"backup:get", "backup:get_all"} <= by_role[policy.Role.READER]
    assert {"backup:create", "backup:delete", "backup:restore", "backup:update"} <= \
        by_role[policy.Role.MEMBER]
    assert {"backup:export-import", "backup:backup-import",
            "volume_extension:backup_admin_actions:reset_status"} <= by_role[policy.Role.ADMIN]
    readable = by_role[policy.Role.READER]
    for ctx, may in ((READER, readable), (MEMBER, readable | by_role[policy.Role.MEMBER]),
                     (ADMIN, set(policy.RULES))):
        for rule in policy.RULES:
            assert policy.allowed(ctx, rule) == (rule in may), (ctx.roles, rule)
    assert not policy.allowed(MEMBER, "no:such-rule") and policy.allowed(ADMIN, "no:such-rule")
    # the target's project counts: a member of alpha is nobody in beta
    assert not policy.allowed(MEMBER, "backup:get", {"project_id": "beta"})
    assert policy.allowed(ADMIN, "backup:get", {"project_id": "beta"})


def test_the_entry_point_feeds_the_sample_generator():
    found = [ep for ep in metadata.entry_points(group="oslo.policy.policies")
             if ep.name == "orchestrator"]
    assert found and found[0].load() is policy.list_rules
    tool = Path(sys.executable).parent / "oslopolicy-sample-generator"
    out = subprocess.run([str(tool), "--namespace", "orchestrator"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name, role in policy.RULES.items():
        assert f'#"{name}": "{policy.CHECKS[role]}"' in out.stdout, name
    assert '#"context_is_admin": "role:admin"' in out.stdout


def test_a_policy_file_overrides_a_rule_and_is_reread_when_it_changes(policy_file):
    assert not policy.allowed(READER, "backup:create")
    _rewrite(policy_file, '"backup:create": "rule:xena_system_admin_or_project_reader"\n')
    assert policy.allowed(READER, "backup:create")
    # the blanket rule for writes gives way where the route's rule lets a reader act
    policy.authorize_method(READER, "POST", "/v3/backups", rule="backup:create")
    with pytest.raises(errors.PolicyNotAuthorized):
        policy.authorize_method(READER, "DELETE", "/v3/backups/x", rule="backup:delete")
    _rewrite(policy_file, '"backup:create": "role:admin"\n"backup:get": "!"\n')
    assert not policy.allowed(MEMBER, "backup:create") and policy.allowed(ADMIN, "backup:create")
    with pytest.raises(errors.PolicyNotAuthorized, match="backup:create"):
        policy.authorize(MEMBER, "backup:create")
    assert not policy.allowed(MEMBER, "backup:get")
    assert policy.allowed(MEMBER, "backup:delete")  # left out of the file: the default
    _rewrite(policy_file, "{}\n")
    assert policy.allowed(MEMBER, "backup:create") and policy.allowed(MEMBER, "backup:get")


def test_a_missing_or_broken_policy_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="ORCH_POLICY_FILE"):
        policy.configure(str(tmp_path / "absent.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text('"backup:create": [unclosed\n')
    try:
        with pytest.raises(ValueError, match="ORCH_POLICY_FILE"):
            policy.configure(str(broken))
    finally:
        policy.configure(None)
    assert policy.allowed(MEMBER, "backup:create")


def test_keystone_mode_needs_its_service_user():
    with pytest.raises(ValueError, match=r"ORCH_KEYSTONE_AUTH_URL.*ORCH_KEYSTONE_PASSWORD"):
        Settings(auth="keystone", keystone_username="svc", keystone_project_name="service")
    s = Settings(auth="keystone", keystone_auth_url="http://127.0.0.1:5000/v3",
                 keystone_username="svc", keystone_password="s3cr3t-value",
                 keystone_project_name="service")
    assert (s.keystone_user_domain_name, s.keystone_project_domain_name) == \
        ("Default", "Default")
    assert "s3cr3t-value" not in repr(s)  # the password is never printed
    with pytest.raises(ValueError, match="ORCH_KEYSTONE_INTERFACE"):
        Settings(keystone_interface="private")


def _context(headers: dict) -> RequestContext:
    app = Flask("t")
    with app.test_request_context("/v3/backups", headers=headers):
        return keystone_context(request, "req-1")


CONFIRMED = {"X-Identity-Status": "Confirmed", "X-User-Id": "uid", "X-Project-Id": "pid",
             "X-User-Domain-Id": "default", "X-Project-Domain-Id": "default"}


def test_the_keystone_context_reads_auth_tokens_headers():
    ctx = _context({**CONFIRMED, "X-Roles": "Reader,member"})
    assert (ctx.user_id, ctx.project_id, ctx.roles) == ("uid", "pid", ("reader", "member"))
    assert ctx.keystone and not ctx.is_admin and ctx.can_write()
    assert ctx.user_domain_id == ctx.project_domain_id == "default"
    reader = _context({**CONFIRMED, "X-Roles": "reader"})
    assert not reader.can_write() and not policy.allowed(reader, "backup:create")
    # Keystone's roles are taken as they are: a custom role alone is no member
    other = _context({**CONFIRMED, "X-Roles": "observer"})
    assert not other.can_write() and not policy.allowed(other, "backup:get")
    admin = _context({**CONFIRMED, "X-Roles": "admin,member,reader",
                      "X-Service-Identity-Status": "Confirmed", "X-Service-Roles": "service",
                      "X-Is-Admin-Project": "True"})
    assert admin.is_admin and admin.service_roles == ("service",)
    assert policy.allowed(admin, "backup:backup-import")
    # the service roles of a service token that was not confirmed are not believed
    unconfirmed = _context({**CONFIRMED, "X-Service-Roles": "service"})
    assert unconfirmed.service_roles == ()


def test_the_keystone_context_refuses_what_auth_token_did_not_confirm():
    for headers in ({}, {**CONFIRMED, "X-Identity-Status": "Invalid"},
                    {k: v for k, v in CONFIRMED.items() if k != "X-User-Id"}):
        with pytest.raises(errors.NotAuthenticated):
            _context(headers)
    system = {k: v for k, v in CONFIRMED.items() if k != "X-Project-Id"}
    with pytest.raises(errors.PolicyNotAuthorized, match="system all"):
        _context({**system, "X-Roles": "admin", "OpenStack-System-Scope": "all"})
    with pytest.raises(errors.PolicyNotAuthorized, match="domain d1"):
        _context({**system, "X-Roles": "admin", "X-Domain-Id": "d1"})


def test_a_broken_rewrite_keeps_the_rules_in_force(policy_file):
    _rewrite(policy_file, '"backup:create": "role:admin"\n')
    assert not policy.allowed(MEMBER, "backup:create")
    _rewrite(policy_file, '"backup:create": [half written\n')
    assert not policy.allowed(MEMBER, "backup:create")  # the last good rules
    _rewrite(policy_file, '"backup:create": "rule:xena_system_admin_or_project_member"\n')
    assert policy.allowed(MEMBER, "backup:create")


def test_decisions_are_not_remembered_when_a_remote_check_decides(policy_file):
    policy.allowed(MEMBER, "backup:create")
    assert policy._STATE.memoize and policy._STATE.memo
    # a rule that asks a server (never reached here: its rule is not the one checked)
    _rewrite(policy_file, '"backup:verify": "role:admin or http://127.0.0.1:9/check"\n')
    assert policy.allowed(MEMBER, "backup:create")
    assert not policy._STATE.memoize and not policy._STATE.memo
    _rewrite(policy_file, "{}\n")
    assert policy.allowed(MEMBER, "backup:create") and policy._STATE.memoize
