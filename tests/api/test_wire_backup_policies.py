"""The backup-policies resource over real HTTP with a real worker: the body clients rely
on, bad input as a 400 fault with nothing written, project scoping, os-run through the
backup create rules, os-prune with and without dry_run, and the OpenAPI document."""
from __future__ import annotations

import copy
import itertools

import jsonschema
import pytest
import requests
from sqlalchemy import select
from test_wire_openapi import _json_schema
from wire_helpers import assert_fault
from wire_helpers import db_state

from orchestrator.models import BackupPolicy
from orchestrator.models import BackupPolicyRun

_names = itertools.count()


@pytest.fixture(scope="module")
def stack(stacks):
    return stacks("noauth")


def _project() -> str:
    return f"pol{next(_names)}"


def _body(volume_id: str, **extra) -> dict:
    return {"backup_policy": {"name": "nightly", "description": "gold tier",
                              "schedule": {"cron": "0 2 * * *", "timezone": "Europe/Berlin"},
                              "start_window_seconds": 1800, "run_missed": False,
                              "volume_ids": [volume_id], "volume_metadata": {},
                              "full_every": 7, "full_every_days": 30,
                              "retention": {"keep_last": 2, "keep_daily": 7,
                                            "keep_weekly": 4, "keep_monthly": 6},
                              "enabled": True, **extra}}


def _policies(stack, project) -> list:
    with stack.db.scope(write=False) as s:
        rows = s.scalars(select(BackupPolicy).where(BackupPolicy.project_id == project)).all()
        runs = s.scalars(select(BackupPolicyRun).where(
            BackupPolicyRun.policy_id.in_([r.id for r in rows]))).all()
        return sorted((r.id, r.updated_at, r.deleted) for r in rows) + \
            sorted((r.id,) for r in runs)


def test_create_show_list_update_delete(stack):
    project = _project()
    c = stack.client(project)
    vol = c.create_volume(1)
    r = c.post("/backup-policies", _body(vol["id"]))
    assert r.status_code == 201, r.text
    created = r.json()["backup_policy"]
    pid = created["id"]
    assert created["project_id"] == project and created["name"] == "nightly"
    assert created["schedule"] == {"cron": "0 2 * * *", "timezone": "Europe/Berlin"}
    assert created["retention"] == {"keep_last": 2, "keep_daily": 7, "keep_weekly": 4,
                                    "keep_monthly": 6}
    assert created["volume_ids"] == [vol["id"]] and created["run_missed"] is False
    assert created["missed_runs"] == 0 and created["last_run_at"] is None
    assert created["last_prune"] is None and created["recent_runs"] == []
    # 02:00 Berlin in December is 01:00 UTC.
    assert created["next_run_at"].endswith("T01:00:00.000000")
    assert c.get(f"/backup-policies/{pid}").json()["backup_policy"] == created
    listed = c.get("/backup-policies").json()["backup_policies"]
    assert [p["id"] for p in listed] == [pid] and set(listed[0]) == {"id", "name", "links"}
    assert listed[0]["links"][0]["href"].endswith(f"/v3/backup-policies/{pid}")
    detail = c.get("/backup-policies/detail").json()["backup_policies"]
    assert detail[0]["schedule"] == created["schedule"]
    r = c.put(f"/backup-policies/{pid}", {"backup_policy": {
        "schedule": {"interval_seconds": 3600}, "retention": {"keep_last": 3},
        "enabled": False}})
    assert r.status_code == 200, r.text
    updated = r.json()["backup_policy"]
    assert updated["schedule"] == {"interval_seconds": 3600, "timezone": "UTC"}
    assert updated["retention"] == {"keep_last": 3} and updated["next_run_at"] is None
    assert updated["name"] == "nightly"  # what the update did not name stays
    assert [p["id"] for p in c.get("/backup-policies?enabled=false").json()[
        "backup_policies"]] == [pid]
    assert c.get("/backup-policies?enabled=true").json()["backup_policies"] == []
    assert [p["id"] for p in c.get("/backup-policies?name=nightly").json()[
        "backup_policies"]] == [pid]
    r = c.put(f"/backup-policies/{pid}", {"backup_policy": {"enabled": True}})
    assert r.json()["backup_policy"]["next_run_at"] is not None
    r = c.delete(f"/backup-policies/{pid}")
    assert r.status_code == 202 and r.text == ""
    assert_fault(c.get(f"/backup-policies/{pid}"), 404, f"Backup policy {pid} could not")
    assert c.get("/backup-policies").json()["backup_policies"] == []


def test_projects_are_scoped_and_admins_see_all_with_all_tenants(stack):
    mine, theirs = _project(), _project()
    a, b = stack.client(mine), stack.client(theirs)
    pid = a.post("/backup-policies", _body(a.create_volume(1)["id"])).json()["backup_policy"][
        "id"]
    assert_fault(b.get(f"/backup-policies/{pid}"), 404)
    assert_fault(b.put(f"/backup-policies/{pid}", {"backup_policy": {"name": "x"}}), 404)
    assert_fault(b.delete(f"/backup-policies/{pid}"), 404)
    assert_fault(b.post(f"/backup-policies/{pid}/action", {"os-run": {}}), 404)
    assert b.get("/backup-policies").json()["backup_policies"] == []
    admin = stack.client("admin", "admin")
    everyone = admin.get("/backup-policies?all_tenants=1").json()["backup_policies"]
    assert pid in {p["id"] for p in everyone}
    assert pid not in {p["id"] for p in admin.get("/backup-policies").json()["backup_policies"]}
    assert admin.get(f"/backup-policies/{pid}").json()["backup_policy"]["project_id"] == mine
    # Through the URL with the project segment too.
    r = a.session.get(f"{stack.url}/v3/{mine}/backup-policies/{pid}", timeout=30)
    assert r.status_code == 200 and r.json()["backup_policy"]["id"] == pid


BAD = [
    ({"schedule": {"cron": "61 * * * *"}}, "invalid cron expression"),
    ({"schedule": {"cron": "0 2 * *"}}, "invalid cron expression"),
    ({"schedule": {"cron": "0 2 * * *", "timezone": "Mars/Olympus"}}, "unknown time zone"),
    ({"schedule": {"cron": "0 2 * * *", "interval_seconds": 60}}, "exactly one of"),
    ({"schedule": {}}, "exactly one of"),
    ({"schedule": {"interval_seconds": 0}}, "interval_seconds must be"),
    ({"schedule": {"interval_seconds": 10**12}}, "interval_seconds must be"),
    ({"schedule": {"interval_seconds": 60, "every": 2}}, "every"),
    ({"retention": {"keep_daily": -1}}, "keep_daily must be"),
    ({"retention": {"keep_last": 10**9}}, "keep_last must be"),
    ({"retention": {"keep_forever": 1}}, "keep_forever"),
    ({"retention": {"keep_last": "many"}}, "keep_last"),
    ({"start_window_seconds": 0}, "start_window_seconds must be"),
    ({"full_every": -3}, "full_every must be"),
    ({"colour": "blue"}, "colour"),
    ({"volume_ids": ["not-a-uuid"]}, "volume_ids"),
    ({"volume_ids": "all"}, "volume_ids"),
    ({"volume_ids": [], "volume_metadata": {}}, "needs volume_ids or volume_metadata"),
    ({"name": "x" * 256}, "name"),
]


@pytest.mark.parametrize("change,needle", BAD)
def test_bad_input_is_a_400_fault_and_nothing_is_written(stack, change, needle):
    project = _project()
    c = stack.client(project)
    vol = c.create_volume(1)
    body = _body(vol["id"])
    body["backup_policy"].update(change)
    before = (db_state(stack.db, [project]), _policies(stack, project))
    assert_fault(c.post("/backup-policies", body), 400, needle)
    assert (db_state(stack.db, [project]), _policies(stack, project)) == before
    pid = c.post("/backup-policies", _body(vol["id"])).json()["backup_policy"]["id"]
    before = (db_state(stack.db, [project]), _policies(stack, project))
    assert_fault(c.put(f"/backup-policies/{pid}", {"backup_policy": change}), 400, needle)
    assert (db_state(stack.db, [project]), _policies(stack, project)) == before


def test_volumes_of_another_project_or_missing_ones_are_refused(stack):
    mine, theirs = _project(), _project()
    c = stack.client(mine)
    other = stack.client(theirs).create_volume(1)
    missing = "3f1c1b1e-0000-4000-8000-000000000000"
    for vid in (other["id"], missing):
        before = _policies(stack, mine)
        assert_fault(c.post("/backup-policies", _body(vid)), 400,
                     f"{vid} is not a volume of project {mine}")
        assert _policies(stack, mine) == before == []
    assert_fault(c.post("/backup-policies", {"backup_policy": [1]}), 400)
    assert_fault(c.post("/backup-policies", {"policy": {}}), 400)
    r = requests.post(f"{stack.url}/v3/backup-policies", data="{", timeout=30,
                      headers={"X-Auth-Token": stack.creds(mine),
                               "Content-Type": "application/json"})
    assert_fault(r, 400, "Malformed request body")


def test_os_run_creates_backups_through_the_create_rules_and_prune_explains(stack):
    project = _project()
    c = stack.client(project)
    vol = c.create_volume(1)
    busy = c.create_volume(1)
    body = _body(vol["id"], volume_ids=[vol["id"], busy["id"]],
                 retention={"keep_last": 1}, full_every=None, full_every_days=None)
    pid = c.post("/backup-policies", body).json()["backup_policy"]["id"]
    # A backup in flight makes the second volume busy: the policy's create is refused
    # exactly as an API create would be.
    r = c.post("/backups", {"backup": {"volume_id": busy["id"]}})
    assert r.status_code == 202
    manual = r.json()["backup"]["id"]
    r = c.post(f"/backup-policies/{pid}/action", {"os-run": {}})
    assert r.status_code == 202, r.text
    run = r.json()["run"]
    assert run["kind"] == "manual" and set(run["backup_ids"]) == {vol["id"]}
    assert "backing-up" in run["errors"][busy["id"]]
    first = run["backup_ids"][vol["id"]]
    shown = c.wait("backup", first, {"available"})
    assert shown["policy_id"] == pid
    c.wait("backup", manual, {"available"})
    c.wait("volume", vol["id"], {"available"})
    c.wait("volume", busy["id"], {"available"})
    second_run = c.post(f"/backup-policies/{pid}/action", {"os-run": {}}).json()["run"]
    assert set(second_run["backup_ids"]) == {vol["id"], busy["id"]}  # no longer busy
    second = second_run["backup_ids"][vol["id"]]
    for backup_id in second_run["backup_ids"].values():
        c.wait("backup", backup_id, {"available"})
    c.wait("volume", vol["id"], {"available"})
    r = c.post(f"/backup-policies/{pid}/action", {"os-prune": {"dry_run": True}})
    assert r.status_code == 202, r.text
    plan = r.json()["prune"]
    assert plan["delete"] == [{"backup_id": first, "volume_id": vol["id"],
                               "reason": "no_rule"}]
    assert [k for k in plan["keep"] if k["volume_id"] == vol["id"]] == \
        [{"backup_id": second, "volume_id": vol["id"],
          "rules": ["keep_last", "newest_available"]}]
    assert [k["backup_id"] for k in plan["keep"] if k["volume_id"] == busy["id"]] == \
        [second_run["backup_ids"][busy["id"]]]  # the manual backup is not the policy's
    assert c.get(f"/backups/{first}").json()["backup"]["status"] == "available"
    r = c.post(f"/backup-policies/{pid}/action", {"os-prune": {}})
    assert r.json()["prune"]["delete"] == plan["delete"]
    c.wait("backup", first, {"deleted"})
    kept = c.get(f"/backups/{second}").json()["backup"]
    assert kept["kept_by"] == ["keep_last", "newest_available"] and kept["policy_id"] == pid
    assert c.get(f"/backups/{manual}").json()["backup"]["policy_id"] is None  # never pruned
    shown = c.get(f"/backup-policies/{pid}").json()["backup_policy"]
    assert shown["last_prune"]["deleted"] == 1 and shown["last_run_at"]
    assert shown["last_success"][vol["id"]] == kept["created_at"]
    assert [r["kind"] for r in shown["recent_runs"]] == ["manual", "manual"]
    assert_fault(c.post(f"/backup-policies/{pid}/action", {"os-explode": {}}), 400,
                 "no such action")
    assert_fault(c.post(f"/backup-policies/{pid}/action", {"os-prune": {"dry_run": "maybe"}}),
                 400)


def test_the_resource_is_in_the_openapi_document_and_replies_match_it(stack):
    doc = requests.get(f"{stack.url}/openapi.json", timeout=30).json()
    paths = doc["paths"]
    for path, method in (("/v3/{project_id}/backup-policies", "post"),
                         ("/v3/backup-policies", "get"), ("/v3/backup-policies/detail", "get"),
                         ("/v3/backup-policies/{policy_id}", "put"),
                         ("/v3/backup-policies/{policy_id}", "delete"),
                         ("/v3/backup-policies/{policy_id}/action", "post")):
        assert method in paths[path], (path, method)
    assert "backup_policy:create" in paths["/v3/backup-policies"]["post"]["x-policy"]
    project = _project()
    c = stack.client(project)
    pid = c.post("/backup-policies", _body(c.create_volume(1)["id"])).json()[
        "backup_policy"]["id"]
    for url, op in ((f"/backup-policies/{pid}", "/v3/backup-policies/{policy_id}"),
                    ("/backup-policies/detail", "/v3/backup-policies/detail")):
        schema = paths[op]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        jsonschema.validate(c.get(url).json(),
                            _json_schema(copy.deepcopy(schema), doc["components"]["schemas"]))
