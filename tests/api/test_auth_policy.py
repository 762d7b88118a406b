"""Project isolation and policy on every endpoint, in both auth modes.

Another project's resources are a 404 (never a 403 that would confirm they
exist), admin-only operations are a 403 for everyone else, all_tenants is
ignored for non-admins, and no rejected request changes the database.
"""
from __future__ import annotations

import pytest
from wire_helpers import assert_fault
from wire_helpers import call
from wire_helpers import db_state

MODES = ["noauth", "token"]


@pytest.fixture(scope="module", params=MODES)
def stack(request, stacks):
    return stacks(request.param)


@pytest.fixture(scope="module")
def ids(stack):
    return stack.world().ids


def foreign_calls(a: dict, b: dict) -> list[tuple]:
    """(method, path, body) by a member of beta on alpha's resources (a) or with them."""
    return [
        ("GET", f"/backups/{a['backup']}", None),
        ("PUT", f"/backups/{a['backup']}", {"backup": {"name": "stolen"}}),
        ("DELETE", f"/backups/{a['backup']}", None),
        ("POST", f"/backups/{a['backup']}/restore", {"restore": {"name": "x"}}),
        ("POST", f"/backups/{a['backup']}/restore", {"restore": {"volume_id": b["volume"]}}),
        ("GET", f"/backups/{a['backup']}/export_record", None),
        ("POST", f"/backups/{a['backup']}/action", {"os-reset_status": {"status": "error"}}),
        ("POST", f"/backups/{a['backup']}/action", {"os-force_delete": None}),
        ("POST", f"/backups/{a['backup']}/action", {"os-verify": None}),
        ("POST", "/backups", {"backup": {"volume_id": a["volume"], "name": "x"}}),
        ("POST", "/backups", {"backup": {"volume_id": b["volume"],
                                         "snapshot_id": a["snapshot"]}}),
        ("POST", f"/backups/{b['backup']}/restore", {"restore": {"volume_id": a["volume"]}}),
        ("GET", f"/backups/detail?marker={a['backup']}", None),
        ("GET", f"/volumes/{a['volume']}", None),
        ("DELETE", f"/volumes/{a['volume']}", None),
        ("GET", f"/volumes/detail?marker={a['volume']}", None),
        ("GET", f"/snapshots/{a['snapshot']}", None),
        ("DELETE", f"/snapshots/{a['snapshot']}", None),
        ("POST", "/snapshots", {"snapshot": {"volume_id": a["volume"]}}),
        ("POST", "/volumes", {"volume": {"size": 1, "backup_id": a["backup"]}}),
    ]


def test_other_projects_resources_are_404_on_every_endpoint(stack, ids):
    before = db_state(stack.db, ["alpha", "beta"])
    beta = stack.creds("beta")
    for method, path, body in foreign_calls(ids["alpha"], ids["beta"]):
        for prefix in ("", "/beta"):
            r = call(stack, method, prefix + path, token=beta, json=body)
            assert_fault(r, 404)
            foreign = [v for v in ids["alpha"].values() if v in path or v in str(body)]
            assert any(f in r.json()["itemNotFound"]["message"] for f in foreign), r.text
    assert db_state(stack.db, ["alpha", "beta"]) == before


def test_lists_are_scoped_and_all_tenants_is_ignored_for_non_admins(stack, ids):
    beta = stack.creds("beta")
    for collection in ("backups", "volumes", "snapshots"):
        for query in ("", "?all_tenants=1", "?all_tenants=true&with_count=true"):
            r = call(stack, "GET", f"/{collection}/detail{query}", token=beta)
            assert r.status_code == 200, r.text
            items = r.json()[collection]
            assert items and all(x["id"] not in ids["alpha"].values() for x in items)
    r = call(stack, "GET", f"/backups?volume_id={ids['alpha']['volume']}", token=beta)
    assert r.json()["backups"] == []
    # A non-admin may not even filter by project.
    assert_fault(call(stack, "GET", "/backups?project_id=alpha", token=beta), 400,
                 "project_id")


def test_admins_see_everything_by_id_and_with_all_tenants(stack, ids):
    admin = stack.creds("beta", "admin")
    assert call(stack, "GET", f"/backups/{ids['alpha']['backup']}", token=admin).status_code \
        == 200
    own = {b["id"] for b in call(stack, "GET", "/backups", token=admin).json()["backups"]}
    assert ids["alpha"]["backup"] not in own and ids["beta"]["backup"] in own
    every = {b["id"] for b in call(stack, "GET", "/backups?all_tenants=1&limit=1000",
                                   token=admin).json()["backups"]}
    assert {ids["alpha"]["backup"], ids["beta"]["backup"]} <= every
    only_alpha = call(stack, "GET", "/backups/detail?all_tenants=1&project_id=alpha",
                      token=admin).json()["backups"]
    assert {b["id"] for b in only_alpha} == {ids["alpha"]["backup"], ids["alpha"]["backup2"]}
    meta = call(stack, "GET", '/backups/detail?all_tenants=1&metadata={"n": "b2"}',
                token=admin).json()["backups"]
    assert {ids["alpha"]["backup2"], ids["beta"]["backup2"]} <= {b["id"] for b in meta}
    assert ids["alpha"]["backup"] not in {b["id"] for b in meta}
    assert_fault(call(stack, "GET", "/backups?all_tenants=perhaps", token=admin), 400,
                 "all_tenants", "perhaps")


def test_admin_only_operations_are_403_for_members(stack, ids):
    a = ids["alpha"]
    member = stack.creds("alpha")
    before = db_state(stack.db, ["alpha", "beta"])
    admin_only = [
        ("GET", f"/backups/{a['backup']}/export_record", None, "backup:export-import"),
        ("POST", "/backups/import_record",
         {"backup-record": {"backup_service": "x", "backup_url": "eyJ9"}},
         "backup:backup-import"),
        ("POST", f"/backups/{a['backup']}/action", {"os-reset_status": {"status": "error"}},
         "reset_status"),
        ("POST", f"/backups/{a['backup']}/action", {"os-force_delete": {}}, "force_delete"),
        ("POST", f"/backups/{a['backup']}/action", {"os-verify": {}}, "backup:verify"),
        ("GET", "/os-services", None, "services"),
        ("PUT", "/os-services/disable", {"host": "wire-x", "binary": "cinder-backup"},
         "services"),
        ("PUT", "/os-quota-sets/alpha", {"quota_set": {"backups": 50}}, "quotas:update"),
        ("DELETE", "/os-quota-sets/alpha", None, "quotas:update"),
        ("DELETE", f"/volumes/{a['volume']}?force=true", None, "force_delete"),
        ("GET", "/os-quota-sets/beta", None, "quotas:show"),
    ]
    for method, path, body, rule in admin_only:
        assert_fault(call(stack, method, path, token=member, json=body), 403, rule)
    assert db_state(stack.db, ["alpha", "beta"]) == before
    # ... and what members may do.
    assert call(stack, "GET", "/os-quota-sets/alpha?usage=True", token=member).status_code == 200
    assert call(stack, "GET", "/os-quota-sets/alpha/defaults", token=member).status_code == 200
    assert call(stack, "GET", "/limits", token=member).status_code == 200
    assert call(stack, "GET", "/os-availability-zone", token=member).status_code == 200


def test_a_url_project_other_than_the_callers_is_400_even_for_admins(stack, ids):
    for role in ("member", "admin"):
        token = stack.creds("alpha", role)
        for path in ("/beta/backups", f"/beta/backups/{ids['alpha']['backup']}",
                     "/beta/os-quota-sets/alpha"):
            assert_fault(call(stack, "GET", path, token=token), 400, "Malformed request url")
        assert call(stack, "GET", "/alpha/backups", token=token).status_code == 200


def test_readers_may_only_read(stacks):
    stack = stacks("token")
    ids = stack.world().ids["alpha"]
    reader = stack.creds("alpha", "reader")
    before = db_state(stack.db, ["alpha"])
    for path in ("/backups/detail", f"/backups/{ids['backup']}", f"/volumes/{ids['volume']}",
                 "/snapshots", "/os-quota-sets/alpha", "/limits"):
        assert call(stack, "GET", path, token=reader).status_code == 200, path
    writes = [("POST", "/backups", {"backup": {"volume_id": ids["volume"]}}),
              ("PUT", f"/backups/{ids['backup']}", {"backup": {"name": "r"}}),
              ("DELETE", f"/backups/{ids['backup']}", None),
              ("POST", f"/backups/{ids['backup']}/restore", {"restore": None}),
              ("POST", "/volumes", {"volume": {"size": 1}}),
              ("DELETE", f"/snapshots/{ids['snapshot']}", None)]
    for method, path, body in writes:
        assert_fault(call(stack, method, path, token=reader, json=body), 403, "reader")
    assert db_state(stack.db, ["alpha"]) == before
