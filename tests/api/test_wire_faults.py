"""Transport, fault and validation rules of the contract, over real HTTP."""
from __future__ import annotations

import base64
import json
import re
import uuid
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
import requests
from wire_helpers import assert_fault
from wire_helpers import call
from wire_helpers import db_state

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")


@pytest.fixture(scope="module")
def stack(stacks):
    return stacks("noauth")


@pytest.fixture(scope="module")
def ids(stack):
    return stack.world().ids["alpha"]


@pytest.fixture
def unchanged(stack):
    """Asserts at the end of the test that nothing of alpha/beta/faults changed."""
    before = db_state(stack.db, ["alpha", "beta", "faults"])
    yield
    assert db_state(stack.db, ["alpha", "beta", "faults"]) == before


def member(stack):
    return stack.creds("alpha")


def admin(stack):
    return stack.creds("alpha", "admin")


def test_transport_headers_and_formats(stack, ids):
    r = call(stack, "GET", f"/backups/{ids['backup']}", token=member(stack))
    rid = r.headers["x-openstack-request-id"]
    assert re.fullmatch(r"req-[0-9a-f-]{36}", rid) and r.headers["x-compute-request-id"] == rid
    assert r.headers["Content-Type"] == "application/json"
    b = r.json()["backup"]
    assert TIMESTAMP.match(b["created_at"]) and TIMESTAMP.match(b["data_timestamp"])
    assert b["links"] == [
        {"rel": "self", "href": f"{stack.url}/v3/backups/{ids['backup']}"},
        {"rel": "bookmark", "href": f"{stack.url}/backups/{ids['backup']}"}]
    r = call(stack, "GET", f"/alpha/backups/{ids['backup']}", token=member(stack))
    assert r.json()["backup"]["links"][0]["href"] == \
        f"{stack.url}/v3/alpha/backups/{ids['backup']}"
    r = call(stack, "GET", "/backups/x/nothing/here", token=member(stack))
    assert_fault(r, 404)
    # Under /v3/ a URL that names nothing is a 404, not the version document.
    for path in ("/nonsense", "/alpha", "/alpha/"):
        assert_fault(call(stack, "GET", path, token=member(stack)), 404)
    assert "versions" in call(stack, "GET", "", token=None).json()
    assert r.headers["OpenStack-API-Version"] == "volume 3.71"
    r = call(stack, "PATCH", "/backups", token=member(stack))
    assert_fault(r, 405, "PATCH")
    assert "GET" in r.headers["Allow"]


def test_bodies_json_only_size_limited(stack, ids, unchanged):
    token = member(stack)
    r = call(stack, "POST", "/backups", token=token, data="{nope",
             headers={"Content-Type": "application/json"})
    assert_fault(r, 400, "Malformed request body")
    r = call(stack, "POST", "/backups", token=token, data=json.dumps(
        {"backup": {"volume_id": ids["volume"]}}), headers={"Content-Type": "text/plain"})
    assert r.json()["badMediaType"]["code"] == 415
    big = {"backup": {"volume_id": ids["volume"], "description": "x" * (1024 * 1024 + 10)}}
    r = call(stack, "POST", "/backups", token=token, json=big)
    assert_fault(r, 413, "too large")
    assert r.json()["overLimit"]["retryAfter"] == "0" and r.headers["Retry-After"] == "0"
    for bad in ('["backup"]', '{"backup": {"volume_id": "\\u0000"}}',
                '{"backup": {"name": "\\ud800"}}', "[" * 5000, '{"backup": NaN}'):
        r = call(stack, "POST", "/backups", token=token, data=bad,
                 headers={"Content-Type": "application/json"})
        assert_fault(r, 400)


def test_body_limit_is_configurable(stacks):
    small = stacks("noauth", worker=False, max_body_bytes=512)
    r = call(small, "POST", "/volumes", token="d:d", json={"volume": {"size": 1,
                                                                     "name": "n" * 600}})
    assert_fault(r, 413, "512 bytes")


def test_a_chunked_body_past_the_limit_is_413_not_truncated(stacks):
    small = stacks("noauth", worker=False, max_body_bytes=512)
    body = json.dumps({"volume": {"size": 1, "name": "n" * 200,
                                  "description": "d" * 400}}).encode()

    def chunks():  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(body), 64):
            yield body[i:i + 64]
    r = requests.post(f"{small.url}/v3/volumes", data=chunks(), timeout=30,
                      headers={"X-Auth-Token": "d:d", "Content-Type": "application/json"})
    assert_fault(r, 413, "512 bytes")
    small_enough = json.dumps({"volume": {"size": 1, "name": "chunked"}}).encode()
    r = requests.post(f"{small.url}/v3/volumes", data=iter([small_enough[:10],
                                                          small_enough[10:]]), timeout=30,
                      headers={"X-Auth-Token": "d:d", "Content-Type": "application/json"})
    assert r.status_code != 413, r.text


def test_backup_create_validation(stack, ids, unchanged):
    token = member(stack)
    cases = [({"volume_id": "not-a-uuid"}, 400, "volume_id"),
             ({}, 400, "volume_id"),
             ({"volume_id": ids["volume"], "incremental": 5}, 400, "incremental"),
             ({"volume_id": ids["volume"], "colour": "red"}, 400, "colour"),
             ({"volume_id": ids["volume"], "name": "n" * 256}, 400, "name"),
             ({"volume_id": ids["volume"], "container": "../etc"}, 400, "container"),
             ({"volume_id": ids["volume"], "metadata": {"k": 1}}, 400, "metadata"),
             ({"volume_id": ids["volume"], "metadata": {"bad*key": "v"}}, 400, "metadata"),
             ({"volume_id": str(uuid.uuid4())}, 404, "could not be found"),
             ({"volume_id": ids["volume"], "snapshot_id": str(uuid.uuid4())}, 404, "Snapshot"),
             ({"volume_id": ids["volume"], "incremental": "yes", "snapshot_id": "x"}, 400,
              "snapshot_id")]
    for body, code, needle in cases:
        assert_fault(call(stack, "POST", "/backups", token=token, json={"backup": body}), code,
                     needle)
    assert_fault(call(stack, "POST", "/backups", token=token,
                      json={"backup": {"volume_id": ids["volume"]}, "extra": 1}), 400)


def test_actions(stack, ids, unchanged):
    bid, token = ids["backup"], admin(stack)
    for body, needle in (({"os-reset_status": {}}, "status"),
                         ({"os-reset_status": {"status": "deleting"}}, "deleting"),
                         ({"os-reset_status": {"status": "error", "x": 1}}, "x"),
                         ({"os-reset_status": None}, "status"),
                         ({"os-foo": {}}, "There is no such action: os-foo"),
                         ({"os-reset_status": {"status": "error"}, "os-force_delete": {}},
                          "one action"), ({}, "")):
        assert_fault(call(stack, "POST", f"/backups/{bid}/action", token=token, json=body), 400,
                     needle)


def test_reset_status_and_force_delete_accept_what_clients_send(stack):
    c = stack.client("faults")
    vol = c.create_volume(1)
    r = c.post("/backups", {"backup": {"volume_id": vol["id"]}})
    bid = r.json()["backup"]["id"]
    c.wait("backup", bid, {"available"})
    token = stack.creds("faults", "admin")
    r = call(stack, "POST", f"/backups/{bid}/action", token=token,
             json={"os-reset_status": {"status": "ERROR"}})
    assert r.status_code == 202 and r.content == b"" and r.headers["Content-Length"] == "0"
    assert c.get(f"/backups/{bid}").json()["backup"]["status"] == "error"
    assert_fault(call(stack, "GET", f"/backups/{bid}/export_record", token=token), 400,
                 "available", "error")
    r = call(stack, "POST", f"/backups/{bid}/action", token=token,
             json={"os-force_delete": None})
    assert r.status_code == 202 and r.content == b""
    c.wait("backup", bid, {"deleted"})


def test_import_record_errors(stack, ids, unchanged):
    token = admin(stack)

    def imp(record):
        return call(stack, "POST", "/backups/import_record", token=token,
                    json={"backup-record": record})

    def b64(obj) -> str:
        return base64.b64encode(json.dumps(obj).encode()).decode()

    exported = call(stack, "GET", f"/backups/{ids['backup']}/export_record", token=token).json()[
        "backup-record"]
    assert json.loads(base64.b64decode(exported["backup_url"]))["id"] == ids["backup"]
    service = exported["backup_service"]
    cases = [({"backup_service": service}, "backup_url"),
             ({**exported, "more": 1}, "more"),
             ({"backup_service": service, "backup_url": "%%%"}, "Can't parse"),
             ({"backup_service": service, "backup_url": base64.b64encode(b"nope").decode()},
              "Can't parse"),
             ({"backup_service": service, "backup_url": b64({"size": 1})}, "id"),
             ({"backup_service": service, "backup_url": b64({"id": str(uuid.uuid4())})}, "size"),
             ({"backup_service": "cinder.backup.drivers.nfs",
               "backup_url": exported["backup_url"]}, "not supported"),
             (exported, "already exists")]
    for record, needle in cases:
        assert_fault(imp(record), 400, needle)


def test_paging_links_and_list_parameters(stack, ids):
    token = member(stack)
    r = call(stack, "GET", "/alpha/backups/detail?limit=1&sort=display_name:asc&status=available",
             token=token)
    body = r.json()
    assert [b["name"] for b in body["backups"]] == ["alpha-b1"]
    href = body["backups_links"][0]["href"]
    parts = urlsplit(href)
    assert f"{parts.scheme}://{parts.netloc}" == stack.url
    assert parts.path == "/v3/alpha/backups/detail"
    assert parse_qs(parts.query) == {"limit": ["1"], "sort": ["display_name:asc"],
                                     "status": ["available"], "marker": [ids["backup"]]}
    page2 = requests.get(href, headers={"X-Auth-Token": token,
                                        "OpenStack-API-Version": "volume 3.71"}, timeout=30)
    assert [b["name"] for b in page2.json()["backups"]] == ["alpha-b2"]
    page3 = requests.get(page2.json()["backups_links"][0]["href"], timeout=30,
                         headers={"X-Auth-Token": token})
    assert page3.json() == {"backups": []}
    r = call(stack, "GET", "/backups?offset=1&sort=display_name:asc", token=token).json()
    assert [b["name"] for b in r["backups"]] == ["alpha-b2"] and "backups_links" not in r
    assert "backups_links" not in call(stack, "GET", "/backups?limit=0", token=token).json()
    for query, needle in (("limit=x", "limit param must be an integer"),
                          ("limit=-1", "limit param must be positive"),
                          ("offset=-1", "offset"), ("offset=x", "offset"),
                          ("sort=size:up", "direction"), ("sort=colour", "sort key colour"),
                          ("sort=name&sort_key=size", "sort"),
                          ("metadata=nope", "Invalid filters")):
        assert_fault(call(stack, "GET", f"/backups?{query}", token=token), 400, needle)
    assert_fault(call(stack, "GET", f"/backups?marker={uuid.uuid4()}", token=token), 404,
                 "Marker")
    assert_fault(call(stack, "GET", "/backups?metadata=nope", token=admin(stack)), 400,
                 "metadata filter")


def test_volume_create_rules(stack, unchanged):
    token = stack.creds("alpha")
    for body, version, needle in (({"size": 1.5}, "3.71", "size"),
                                  ({"size": True}, "3.71", "size"),
                                  ({"size": 0}, "3.71", "size"),
                                  ({}, "3.71", "size"),
                                  ({"size": 1, "colour": "red"}, "3.53", "colour"),
                                  ({"size": "x"}, "3.0", "size")):
        assert_fault(call(stack, "POST", "/volumes", token=token, version=version,
                          json={"volume": body}), 400, needle)
    assert_fault(call(stack, "DELETE", f"/volumes/{uuid.uuid4()}", token=token), 404)


def test_volume_create_accepts_what_cinderclient_sends(stack):
    token = stack.creds("faults")
    body = {"volume": {"size": "1", "name": " spaced ", "description": None,
                       "volume_type": None, "availability_zone": None, "metadata": {},
                       "snapshot_id": None, "source_volid": None, "imageRef": None,
                       "consistencygroup_id": None, "backup_id": None, "colour": "ignored"},
            "OS-SCH-HNT:scheduler_hints": {"same_host": []}}
    r = call(stack, "POST", "/volumes", token=token, version="3.52", json=body)
    assert r.status_code == 202, r.text
    vol = r.json()["volume"]
    assert vol["name"] == "spaced" and vol["size"] == 1 and vol["volume_type"] == "__DEFAULT__"
    assert vol["updated_at"] is None or TIMESTAMP.match(vol["updated_at"])


def test_quota_sets(stack):
    token = admin(stack)
    project = "quota-target"
    cases = [({"quota_set": {}}, "at least one"),
             ({"quota_set": {"tenant_id": project}}, "at least one"),
             ({"quota_set": {"backups": -2}}, "backups"),
             ({"quota_set": {"backups": 1.5}}, "backups"),
             ({"quota_set": {"backups": True}}, "backups"),
             ({"quota_set": {"wombats": 3}}, "wombats"),
             ({"quota_set": []}, "quota_set"), ({"other": {}}, "quota_set")]
    before = db_state(stack.db, [project])
    for body, needle in cases:
        assert_fault(call(stack, "PUT", f"/os-quota-sets/{project}", token=token, json=body),
                     400, needle)
    assert db_state(stack.db, [project]) == before
    r = call(stack, "PUT", f"/os-quota-sets/{project}", token=token,
             json={"quota_set": {"tenant_id": project, "backups": "4", "volumes": -1}})
    assert r.status_code == 200 and r.json()["quota_set"]["backups"] == 4
    assert "id" not in r.json()["quota_set"]
    shown = call(stack, "GET", f"/os-quota-sets/{project}?usage=True", token=token).json()
    assert shown["quota_set"]["id"] == project
    assert shown["quota_set"]["backups"] == {"limit": 4, "in_use": 0, "reserved": 0}
    assert shown["quota_set"]["volumes___DEFAULT__"]["limit"] == -1
    assert call(stack, "DELETE", f"/os-quota-sets/{project}", token=token).status_code == 200
    assert call(stack, "GET", f"/os-quota-sets/{project}", token=token).json()[
        "quota_set"]["backups"] == 10
    # Below what is in use: refused.
    assert_fault(call(stack, "PUT", "/os-quota-sets/alpha", token=token,
                      json={"quota_set": {"backups": 1}}), 400, "backups")
