"""How `orchestrator backup` chooses its credentials from options and OS_* variables.

Pure resolution (orchestrator.client.resolve_credentials): no Keystone is called here;
tests/keystone/test_cli_keystone.py runs the same rules against a real one.
"""
from __future__ import annotations

import pytest

from orchestrator.client import CredentialsMissing
from orchestrator.client import resolve_credentials

OPENRC = {"OS_AUTH_URL": "http://keystone:5000", "OS_USERNAME": "alice",
          "OS_PASSWORD": "s3cret-pw", "OS_PROJECT_NAME": "alpha",
          "OS_REGION_NAME": "RegionOne"}


def test_an_openrc_means_keystone_password_auth_with_default_domains():
    creds = resolve_credentials(OPENRC)
    ks = creds.keystone
    assert creds.mode == "keystone" and creds.header is None
    assert (ks.auth_url, ks.username, ks.password, ks.project_name) == (
        "http://keystone:5000", "alice", "s3cret-pw", "alpha")
    assert (ks.user_domain_name, ks.project_domain_name) == ("Default", "Default")
    assert (ks.region_name, ks.interface, ks.token) == ("RegionOne", "public", None)
    assert "s3cret-pw" not in repr(creds)


def test_options_win_over_the_environment_field_by_field():
    ks = resolve_credentials(OPENRC, username="bob", project_name="beta",
                             interface="internalURL", region_name="RegionTwo").keystone
    assert (ks.username, ks.password, ks.project_name) == ("bob", "s3cret-pw", "beta")
    assert (ks.interface, ks.region_name) == ("internal", "RegionTwo")


def test_ids_replace_names_and_their_domains():
    env = {**OPENRC, "OS_USER_DOMAIN_ID": "d1", "OS_PROJECT_ID": "p-1",
           "OS_PROJECT_DOMAIN_NAME": "Other"}
    ks = resolve_credentials(env).keystone
    assert (ks.user_domain_id, ks.user_domain_name) == ("d1", None)
    # a project id needs no name, and no domain
    assert (ks.project_id, ks.project_name, ks.project_domain_name) == ("p-1", None, None)
    ks = resolve_credentials({**OPENRC, "OS_PROJECT_DOMAIN_ID": "d2"}).keystone
    assert (ks.project_domain_id, ks.project_domain_name) == ("d2", None)
    # a user id: no user domain at all
    ks = resolve_credentials({**OPENRC, "OS_USER_ID": "u-1"}).keystone
    assert (ks.user_id, ks.user_domain_name, ks.user_domain_id) == ("u-1", None, None)


def test_a_token_with_an_endpoint_is_sent_as_it_is():
    creds = resolve_credentials({"OS_TOKEN": "orch_abc", "OS_ENDPOINT": "http://api/v3"})
    assert (creds.mode, creds.header) == ("token", "orch_abc")
    assert "orch_abc" not in repr(creds)
    # no OS_AUTH_URL: also as it is (ORCH_AUTH=token against the local API)
    assert resolve_credentials({"OS_TOKEN": "orch_abc"}).mode == "token"
    # with OS_AUTH_URL and no endpoint: a Keystone token, re-scoped, catalog
    creds = resolve_credentials({"OS_TOKEN": "ks", "OS_AUTH_URL": "http://k/v3",
                                 "OS_PROJECT_ID": "p"})
    assert creds.mode == "keystone" and creds.keystone.token == "ks"
    assert creds.keystone.password is None and creds.keystone.username is None


def test_token_or_password_when_both_are_given():
    both = {**OPENRC, "OS_TOKEN": "tok"}
    assert resolve_credentials(both).keystone.password == "s3cret-pw"
    # with an endpoint too, the token (as the openstack CLI does)
    assert resolve_credentials({**both, "OS_ENDPOINT": "http://api/v3"}).mode == "token"
    # the one given as an option wins over the other from the environment
    creds = resolve_credentials(both, token="opt-token")
    assert creds.mode == "keystone" and creds.keystone.token == "opt-token"
    creds = resolve_credentials({**both, "OS_ENDPOINT": "http://api/v3"}, password="pw2")
    assert creds.keystone.password == "pw2"
    # OS_AUTH_TYPE decides over all that
    creds = resolve_credentials({**both, "OS_AUTH_TYPE": "admin_token"})
    assert (creds.mode, creds.header) == ("token", "tok")
    assert resolve_credentials(both, auth_type="v3token").keystone.token == "tok"


def test_noauth_as_before():
    env = {"OS_AUTH_TYPE": "noauth", "OS_USER_ID": "demo", "OS_PROJECT_ID": "demo"}
    assert resolve_credentials(env).header == "demo:demo"
    assert resolve_credentials({"OS_PROJECT_ID": "p"}).header == "p:p"
    # noauth explicitly, even with an openrc loaded
    creds = resolve_credentials({**OPENRC, **env})
    assert (creds.mode, creds.header) == ("noauth", "demo:demo")


@pytest.mark.parametrize(("env", "says"), [
    ({}, "no credentials"),
    ({k: v for k, v in OPENRC.items() if k != "OS_PASSWORD"}, "OS_PASSWORD"),
    ({k: v for k, v in OPENRC.items() if k != "OS_AUTH_URL"}, "OS_AUTH_URL"),
    ({k: v for k, v in OPENRC.items() if k != "OS_USERNAME"}, "OS_USERNAME"),
    ({k: v for k, v in OPENRC.items() if k != "OS_PROJECT_NAME"}, "OS_PROJECT_NAME"),
    ({"OS_AUTH_TYPE": "v3oidcpassword"}, "not supported"),
    ({"OS_CLOUD": "mycloud"}, "clouds.yaml"),
    ({"OS_AUTH_TYPE": "admin_token"}, "needs a token"),
])
def test_incomplete_credentials_say_what_to_set(env, says):
    with pytest.raises(CredentialsMissing, match=says) as raised:
        resolve_credentials(env)
    assert "s3cret-pw" not in str(raised.value)
