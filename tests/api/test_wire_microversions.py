"""Microversion negotiation and what each version changes, over real HTTP."""
from __future__ import annotations

import pytest
import requests
from sqlalchemy import update

from orchestrator.models import Backup


@pytest.fixture(scope="module")
def stack(stacks):
    return stacks("noauth")


@pytest.fixture(scope="module")
def world(stack):
    return stack.world()


def raw(stack, path, version=None, method="GET", token=None, **kw):
    headers = {"X-Auth-Token": token or stack.creds("alpha")}
    if version is not None:
        headers["OpenStack-API-Version"] = version
    return requests.request(method, f"{stack.url}/v3{path}", headers=headers, timeout=30, **kw)


def assert_fault(r, code, name, *needles):
    assert r.status_code == code, r.text
    body = r.json()
    assert list(body) == [name], body
    assert body[name]["code"] == code
    for needle in needles:
        assert needle in body[name]["message"], body
    return body[name]["message"]


def test_no_header_means_3_0_and_the_version_is_echoed(stack, world):
    r = raw(stack, f"/backups/{world.ids['alpha']['backup']}")
    assert r.status_code == 200
    assert r.headers["OpenStack-API-Version"] == "volume 3.0"
    assert "OpenStack-API-Version" in r.headers["Vary"]
    assert "metadata" not in r.json()["backup"]
    r = raw(stack, "/backups", "volume latest")
    assert r.headers["OpenStack-API-Version"] == "volume 3.71"
    r = raw(stack, "/backups", "compute 2.1, Volume 3.9")
    assert r.status_code == 200 and r.headers["OpenStack-API-Version"] == "volume 3.9"
    for header in ("volume 3.0", "volume 3.71"):
        assert raw(stack, "/backups", header).status_code == 200


@pytest.mark.parametrize("header", ["volume 3.72", "volume 2.0", "volume 4.0", "volume 3.100"])
def test_out_of_range_is_406(stack, header):
    r = raw(stack, "/backups", header)
    assert_fault(r, 406, "computeFault", header.split()[1], "3.71")
    assert r.headers["OpenStack-API-Version"].startswith("volume ")


@pytest.mark.parametrize("header", ["volume 3.x", "volume 3.07", "volume x", "volume",
                                    "volume 3", "compute 2.1", "volume 3.1.1"])
def test_malformed_is_400(stack, header):
    r = raw(stack, "/backups", header)
    assert_fault(r, 400, "badRequest")
    assert r.headers["OpenStack-API-Version"] == "volume 3.0"


def test_discovery_needs_no_credentials(stack):
    r = requests.get(f"{stack.url}/", timeout=30)
    assert r.status_code == 300
    v = r.json()["versions"][0]
    assert (v["min_version"], v["version"], v["id"]) == ("3.0", "3.71", "v3.0")
    assert {"rel": "self", "href": f"{stack.url}/v3/"} in v["links"]
    for path in ("/v3", "/v3/"):
        r = requests.get(f"{stack.url}{path}", timeout=30)
        assert r.status_code == 200 and r.json()["versions"][0]["version"] == "3.71"
    # A project URL is no version document (keystoneauth's discovery falls back from it
    # to /v3 and the root): without credentials a 401, with them a 404.
    assert requests.get(f"{stack.url}/v3/alpha", timeout=30).status_code == 401
    assert requests.get(f"{stack.url}/v3/backups", timeout=30).status_code == 401


def test_3_9_update(stack, world):
    bid = world.ids["alpha"]["backup2"]
    body = {"backup": {"description": "changed"}}
    assert_fault(raw(stack, f"/backups/{bid}", "volume 3.8", "PUT", json=body), 404,
                 "itemNotFound")
    r = raw(stack, f"/backups/{bid}", "volume 3.9", "PUT", json=body)
    assert r.status_code == 200 and set(r.json()["backup"]) == {"id", "name", "links"}
    assert_fault(raw(stack, f"/backups/{bid}", "volume 3.42", "PUT",
                     json={"backup": {"metadata": {"a": "b"}}}), 400, "badRequest", "metadata")
    assert_fault(raw(stack, f"/backups/{bid}", "volume 3.9", "PUT",
                     json={"backup": {"colour": "red"}}), 400, "badRequest", "colour")


def test_3_43_metadata(stack, world):
    vid = world.ids["alpha"]["volume"]
    bid = world.ids["alpha"]["backup"]
    assert "metadata" not in raw(stack, f"/backups/{bid}", "volume 3.42").json()["backup"]
    assert raw(stack, f"/backups/{bid}", "volume 3.43").json()["backup"]["metadata"] == \
        {"n": "b1"}
    r = raw(stack, "/backups", "volume 3.42", "POST",
            json={"backup": {"volume_id": vid, "metadata": {"a": "b"}}})
    assert_fault(r, 400, "badRequest", "metadata", "3.43")


def test_3_45_with_count(stack, world):
    r = raw(stack, "/backups?with_count=true", "volume 3.44")
    assert "count" not in r.json()
    r = raw(stack, "/backups?with_count=true&limit=1", "volume 3.45")
    body = r.json()
    assert body["count"] == 2 and len(body["backups"]) == 1 and body["backups_links"]
    assert "count" not in raw(stack, "/backups?with_count=false", "volume 3.45").json()
    assert_fault(raw(stack, "/backups?with_count=maybe", "volume 3.45"), 400, "badRequest",
                 "with_count", "maybe")


def test_3_51_availability_zone(stack, world):
    vid = world.ids["alpha"]["volume"]
    r = raw(stack, "/backups", "volume 3.50", "POST",
            json={"backup": {"volume_id": vid, "availability_zone": "nova"}})
    assert_fault(r, 400, "badRequest", "availability_zone", "3.51")
    # At 3.51 the key is accepted; a zone no service is registered in is Cinder's 400.
    r = raw(stack, "/backups", "volume 3.51", "POST",
            json={"backup": {"volume_id": vid, "availability_zone": "nowhere"}})
    assert_fault(r, 400, "badRequest", "Availability zone 'nowhere' is invalid.")


def test_3_18_and_3_56_admin_attributes(stack, world):
    bid = world.ids["alpha"]["backup"]
    admin = stack.creds("alpha", "admin")
    b = raw(stack, f"/backups/{bid}", "volume 3.17", token=admin).json()["backup"]
    assert "os-backup-project-attr:project_id" not in b and "user_id" not in b
    b = raw(stack, f"/backups/{bid}", "volume 3.18", token=admin).json()["backup"]
    assert b["os-backup-project-attr:project_id"] == "alpha" and "user_id" not in b
    b = raw(stack, f"/backups/{bid}", "volume 3.56", token=admin).json()["backup"]
    assert b["user_id"] == "member-of-alpha"
    b = raw(stack, f"/backups/{bid}", "volume 3.71").json()["backup"]
    assert "os-backup-project-attr:project_id" not in b and "user_id" not in b


def test_3_64_encryption_key_id_only_when_set(stack, world):
    bid = world.ids["alpha"]["backup2"]
    with stack.db.scope() as s:   # encrypted backups carry one: clear it, then set it
        original = s.get(Backup, bid).encryption_key_id
        s.execute(update(Backup).where(Backup.id == bid).values(encryption_key_id=None))
    try:
        assert "encryption_key_id" not in raw(stack, f"/backups/{bid}", "volume 3.71").json()[
            "backup"]
        with stack.db.scope() as s:
            s.execute(update(Backup).where(Backup.id == bid).values(
                encryption_key_id="00000000-0000-0000-0000-00000000beef"))
        assert "encryption_key_id" not in raw(stack, f"/backups/{bid}", "volume 3.63").json()[
            "backup"]
        assert raw(stack, f"/backups/{bid}", "volume 3.64").json()["backup"][
            "encryption_key_id"] == "00000000-0000-0000-0000-00000000beef"
    finally:
        with stack.db.scope() as s:
            s.execute(update(Backup).where(Backup.id == bid).values(
                encryption_key_id=original))


def test_volume_and_snapshot_fields_per_version(stack, world):
    vid, sid = world.ids["alpha"]["volume"], world.ids["alpha"]["snapshot"]
    v30 = raw(stack, f"/volumes/{vid}").json()["volume"]
    assert v30["bootable"] == "false" and v30["attachments"] == []
    assert not {"group_id", "shared_targets", "volume_type_id", "consumes_quota"} & set(v30)
    v68 = raw(stack, f"/volumes/{vid}", "volume 3.68").json()["volume"]
    assert v68["shared_targets"] is True and v68["consumes_quota"] is True
    v71 = raw(stack, f"/volumes/{vid}", "volume 3.71").json()["volume"]
    assert v71["shared_targets"] is None and "volume_type_id" in v71 and "group_id" in v71
    assert "cluster_name" not in v71 and "provider_id" not in v71
    admin = raw(stack, f"/volumes/{vid}", "volume 3.71", token=stack.creds("alpha", "admin"))
    assert {"cluster_name", "provider_id", "migration_status"} <= set(admin.json()["volume"])
    s30 = raw(stack, f"/snapshots/{sid}").json()["snapshot"]
    assert not {"group_snapshot_id", "user_id", "consumes_quota"} & set(s30)
    s71 = raw(stack, f"/snapshots/{sid}", "volume 3.71").json()["snapshot"]
    assert {"group_snapshot_id", "user_id", "consumes_quota"} <= set(s71)


def test_filters_3_31_3_34_and_sort_3_37(stack, world):
    # Unknown filters: dropped below 3.31, 400 from 3.31 (non-admin).
    assert len(raw(stack, "/backups?colour=red", "volume 3.30").json()["backups"]) == 2
    assert_fault(raw(stack, "/backups?colour=red", "volume 3.31"), 400, "badRequest",
                 "Invalid filters colour")
    # all_tenants is never an error for a non-admin (cinderclient's find sends it).
    assert raw(stack, "/backups?all_tenants=1", "volume 3.71").status_code == 200
    # Substring filters from 3.34.
    assert_fault(raw(stack, "/backups?name~=b1", "volume 3.33"), 400, "badRequest", "name~")
    names = [b["name"] for b in raw(stack, "/backups?name~=b1", "volume 3.34").json()["backups"]]
    assert names == ["alpha-b1"]
    # sort by name from 3.37; display_name at every version.
    assert_fault(raw(stack, "/backups?sort=name:asc", "volume 3.36"), 400, "badRequest")
    for version, key in (("volume 3.37", "name"), ("volume 3.0", "display_name")):
        got = [b["name"] for b in raw(stack, f"/backups?sort={key}:asc", version).json()[
            "backups"]]
        assert got == ["alpha-b1", "alpha-b2"]
