"""A Keystone cloud for the tests: Keystone, this API behind auth_token, a worker.

Session-scoped: Keystone (see keystone_lib) with projects alpha and beta, users
with the reader, member and admin roles, a service user for auth_token, and
this API registered in the catalog with `orchestrator keystone-register`, so
clients find it from password auth alone. The API reads an operator policy
file (``cloud.policy_file``) that a test may rewrite.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import pytest
import redis
from keystone_lib import Identity
from keystone_lib import Keystone
from keystone_lib import KeystoneUnavailable
from keystone_lib import keystone_venv
from orch_testlib import ApiProcess
from orch_testlib import WorkerProcess
from orch_testlib import make_settings

from orchestrator.migrate import upgrade

PASSWORD = "pw-{}"  # each user's password: PASSWORD.format(user name)
SERVICE_USER, SERVICE_PASSWORD = "orchestrator", "service-secret"
# name → (project, roles as assigned; Keystone adds the implied ones)
USERS = {"alice": ("alpha", ("member",)), "rita": ("alpha", ("reader",)),
         "ada": ("alpha", ("admin",)), "bob": ("beta", ("member",))}
_REDIS_DB = 14  # the api stacks use 6-11, the fuzzer 12-13


@dataclass
class Cloud:
    keystone: Keystone
    identity: Identity
    settings: object
    api: ApiProcess
    policy_file: Path
    projects: dict[str, str] = field(default_factory=dict)  # name → id

    @property
    def auth_url(self) -> str:
        return self.keystone.url

    def os_env(self, user: str) -> dict:
        """The environment of an openstack/cinder command run as ``user`` (password auth)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "CINDER_"))}
        return {**base, "OS_AUTH_URL": self.auth_url, "OS_USERNAME": user,
                "OS_PASSWORD": PASSWORD.format(user), "OS_PROJECT_NAME": USERS[user][0],
                "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
                "OS_IDENTITY_API_VERSION": "3", "OS_REGION_NAME": "RegionOne",
                "OS_INTERFACE": "public"}

    def session(self, user: str):
        """A keystoneauth session with ``user``'s password (what cinderclient is given)."""
        from orchestrator.keystone import password_session
        return password_session(self.auth_url, user, PASSWORD.format(user), USERS[user][0])

    def cinder(self, user: str, version: str = "3.64"):
        """python-cinderclient, finding the API in the catalog (volumev3)."""
        from cinderclient import api_versions
        from cinderclient import client
        return client.Client(api_versions.APIVersion(version), session=self.session(user),
                             region_name="RegionOne")

    def set_policy(self, text: str) -> None:
        """Rewrite the operator's policy file (oslo.policy sees the new mtime)."""
        before = self.policy_file.stat().st_mtime_ns
        self.policy_file.write_text(text)
        os.utime(self.policy_file, ns=(before + 2_000_000_000, before + 2_000_000_000))


@pytest.fixture(scope="session")
def keystone(tmp_path_factory):
    try:
        venv = keystone_venv()
    except KeystoneUnavailable as exc:
        pytest.skip(f"Keystone leg skipped: the keystone package cannot be installed here: "
                    f"{exc}")
    server = Keystone(venv, tmp_path_factory.mktemp("keystone")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cloud(keystone, tmp_path_factory, redis_server):
    identity = Identity(keystone)
    service = identity.project("service")
    identity.user(SERVICE_USER, SERVICE_PASSWORD, service, "service")
    projects = {name: identity.project(name) for name in ("alpha", "beta")}
    for user, (project, roles) in USERS.items():
        identity.user(user, PASSWORD.format(user), projects[project], *roles)

    url = f"redis://127.0.0.1:{redis_server.port}/{_REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    state = tmp_path_factory.mktemp("ks-stack")
    policy_file = state / "policy.yaml"
    policy_file.write_text("# operator overrides of orchestrator's rules\n{}\n")
    settings = make_settings(
        state, url, auth="keystone", policy_file=str(policy_file),
        keystone_auth_url=keystone.url, keystone_username=SERVICE_USER,
        keystone_password=SERVICE_PASSWORD, keystone_project_name="service",
        keystone_interface="public",
        # validate every request with Keystone, so a revoked token is refused at once
        keystone_token_cache_time=-1)
    upgrade(settings.database_url)
    # served as in production (granian, two processes: each re-reads the policy file)
    api = ApiProcess(settings, workers=2).wait_ready()
    worker = WorkerProcess(settings, "ks-node", "nova").wait_ready()
    admin_env = {**{k: v for k, v in os.environ.items() if not k.startswith("OS_")},
                 "OS_AUTH_URL": keystone.url, "OS_USERNAME": "admin",
                 "OS_PASSWORD": "bootstrap-secret", "OS_PROJECT_NAME": "admin"}
    out = subprocess.run([str(Path(sys.executable).parent / "orchestrator"),
                          "keystone-register", "--url", f"{api.url}/v3/%(project_id)s",
                          "--region", "RegionOne"],
                         env=admin_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("created") == 6, out.stdout
    yield Cloud(keystone, identity, settings, api, policy_file, projects)
    worker.stop()
    api.stop()
