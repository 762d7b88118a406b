"""The full scenario through every unmodified client, in both auth modes, on a live stack.

volume → backups (full, incremental, from a snapshot) → list/detail with
filters, sorting and paging (the server's page size is 2, so every list of
three follows next links) → update → export → delete → import → restore to a
new and to an existing volume → reset status → force delete → quota show and
update → services and zones. Each (mode, client) pair works in its own
project; the admin steps use an admin of that project.
"""
from __future__ import annotations

import pytest
from wire_drivers import CinderclientDriver
from wire_drivers import CliDriver
from wire_drivers import SdkDriver
from wire_drivers import wait_for

# openstacksdk warns about its own deprecated internals on every call.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:openstack")

MODES = ["noauth", "token"]
CLIENTS = ["cinderclient", "cli", "openstacksdk"]


@pytest.fixture(params=MODES)
def stack(request, stacks):
    return stacks(request.param, max_list_limit=2)


def make_driver(kind: str, stack, project: str, role: str, tmp_path):
    token = stack.creds(project, role)
    if kind == "cinderclient":
        # The member uses /v3/{project}/... URLs, the admin /v3/...: both forms get exercised.
        return CinderclientDriver(stack, token, project, project_in_url=(role != "admin"))
    if kind == "cli":
        return CliDriver(stack, token, project, tmp_path)
    return SdkDriver(stack, token, project)


@pytest.mark.parametrize("kind", CLIENTS)
def test_full_scenario(kind, stack, tmp_path):
    project = f"{stack.mode}-{kind}"
    user = make_driver(kind, stack, project, "member", tmp_path)
    admin = make_driver(kind, stack, project, "admin", tmp_path)
    run_scenario(user, admin, project, stack)


def _available(fetch, what):
    found = wait_for(fetch, {"available", "error"}, what=what)
    assert found["status"] == "available", f"{what}: {found}"
    return found


def run_scenario(user, admin, project: str, stack) -> None:
    # volume, snapshot, three backups
    vol = user.create_volume("vol-a")
    _available(lambda: user.volume(vol), "volume vol-a")

    full = user.create_backup(vol, "full-1", metadata={"purpose": "wire"})
    b = _available(lambda: user.backup(full), "backup full-1")
    assert not b["is_incremental"]
    assert b["metadata"] == {"purpose": "wire"}
    _available(lambda: user.volume(vol), "volume after backup")

    incr = user.create_backup(vol, "incr-1", incremental=True)
    assert _available(lambda: user.backup(incr), "backup incr-1")["is_incremental"]
    _available(lambda: user.volume(vol), "volume after incremental")

    snap = user.create_snapshot(vol, "snap-a")
    _available(lambda: user.snapshot(snap), "snapshot")
    from_snap = user.create_backup(vol, "snap-b", snapshot_id=snap)
    got = _available(lambda: user.backup(from_snap), "backup from snapshot")
    assert got["snapshot_id"] == snap
    _available(lambda: user.snapshot(snap), "snapshot after backup")

    # list / detail with filters, sorting and paging (page size 2 → next links followed)
    ids = {full, incr, from_snap}
    listed = user.list_backups()
    assert {x["id"] for x in listed} == ids and len(listed) == 3
    assert [x["id"] for x in user.list_backups(name="incr-1")] == [incr]
    assert {x["id"] for x in user.list_backups(status="available")} == ids
    assert {x["id"] for x in user.list_backups(volume_id=vol)} == ids
    by_name = user.list_backups(sort="name:asc")
    assert [x["name"] for x in by_name] == ["full-1", "incr-1", "snap-b"]
    assert [x["name"] for x in user.list_backups(sort="name:desc")] == \
        ["snap-b", "incr-1", "full-1"]

    # update name, description, metadata (replaces the whole set)
    user.update_backup(from_snap, name="snap-b2", description="from a snapshot",
                       metadata={"tier": "gold"})
    got = user.backup(from_snap)
    assert (got["name"], got["description"], got["metadata"]) == \
        ("snap-b2", "from a snapshot", {"tier": "gold"})

    # export (admin), delete, import (admin). The delete removed the data, so the
    # import is accepted (201, same id, record fields back) and then fails on the
    # missing manifest, as Cinder's would; test_wire_import.py imports a live one.
    service, url = admin.export(from_snap)
    assert service and url
    user.delete_backup(from_snap)
    wait_for(lambda: user.backup(from_snap), {"gone"}, what="deleted backup")
    imported = admin.import_(service, url)
    assert imported == from_snap
    got = wait_for(lambda: user.backup(imported), {"available", "error"}, what="import")
    assert got["status"] == "error" and "manifest" in got["fail_reason"], got
    assert got["name"] == "snap-b2"
    admin.force_delete(imported)
    wait_for(lambda: user.backup(imported), {"gone"}, what="force-deleted import")

    # restore to a new volume, then to an existing one (the incremental: its chain)
    new_vol = user.restore(full, name="restored-new")
    _available(lambda: user.volume(new_vol), "restored volume")
    assert user.volume(new_vol)["name"] == "restored-new"
    _available(lambda: user.backup(full), "backup after restore")
    target = user.create_volume("target", 1)
    _available(lambda: user.volume(target), "target volume")
    assert user.restore(incr, volume_id=target) == target
    _available(lambda: user.volume(target), "volume restored in place")
    _available(lambda: user.backup(incr), "backup after restore in place")

    # reset status (admin), force delete (admin)
    admin.reset_state(incr, "error")
    assert wait_for(lambda: user.backup(incr), {"error"}, what="reset")["status"] == "error"
    admin.force_delete(incr)
    wait_for(lambda: user.backup(incr), {"gone"}, what="force-deleted backup")

    # quota: show with usage (member), update (admin)
    usage = user.quota(project, usage=True)
    assert usage["backups"]["in_use"] == 1
    assert user.quota(project)["backups"] == 10
    admin.update_quota(project, backups=20)
    assert user.quota(project)["backups"] == 20

    # services (admin) and availability zones (anyone)
    services = admin.services()
    assert any(s["binary"] == "cinder-backup" and s["state"] == "up" for s in services), \
        services
    assert any(z["zoneName"] == "nova" and z["zoneState"]["available"] for z in user.zones())
