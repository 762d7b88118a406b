"""backup-semantics.md §2.7 through the HTTP API with a real worker, failure paths included."""
from __future__ import annotations

import base64
import json
import random
import subprocess
from pathlib import Path

import pytest
from orch_testlib import fill_random
from orch_testlib import volume_file
from orch_testlib import wait_for
from orch_testlib import write_pattern
from sqlalchemy import select
from sqlalchemy import update

from orchestrator import quota
from orchestrator.db import utcnow
from orchestrator.models import Backup
from orchestrator.models import Job
from orchestrator.models import Volume

MiB = 1024 * 1024
GiB = 1024 * MiB


def backup_of(client, volume_id: str, expect: str = "available", **extra) -> dict:
    r = client.post("/backups", {"backup": {"volume_id": volume_id, **extra}})
    assert r.status_code == 202, r.text
    return client.wait("backup", r.json()["backup"]["id"], {"available", "error"}) \
        if expect else r.json()["backup"]


def store_files(settings, container: str) -> list[Path]:
    root = Path(settings.backup_path) / container
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_create_failure_restores_the_exact_previous_status(settings, db, client, admin, worker):
    vol = client.create_volume(size=1)
    with db.scope() as s:  # attached elsewhere: in-use (no attach API in this service)
        s.execute(update(Volume).where(Volume.id == vol["id"]).values(status="in-use"))
    r = client.post("/backups", {"backup": {"volume_id": vol["id"]}})
    assert r.status_code == 400 and "force" in r.json()["badRequest"]["message"]
    volume_file(settings, vol["id"]).unlink()  # the device vanished under the backup
    backup = backup_of(client, vol["id"], force=True)
    assert backup["status"] == "error"
    assert "cannot open source" in backup["fail_reason"]
    assert client.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "in-use"
    with db.scope(write=False) as s:
        assert quota.usage(s, "demo")["backups"] == (1, 0)  # charged until deleted (Cinder)
    assert client.delete(f"/backups/{backup['id']}").status_code == 202
    client.wait("backup", backup["id"], {"deleted"})
    with db.scope(write=False) as s:
        assert quota.usage(s, "demo")["backups"] == (0, 0)


def test_snapshot_and_incremental_rules(settings, db, client, worker):
    vol = client.create_volume(size=1)
    path = volume_file(settings, vol["id"])
    r = client.post("/backups", {"backup": {"volume_id": vol["id"], "incremental": True}})
    assert r.status_code == 400
    assert "No backups available to do an incremental backup" in r.text
    write_pattern(path, 1, [(0, 4 * MiB)])
    full = backup_of(client, vol["id"], name="full")
    assert full["status"] == "available" and not full["is_incremental"]

    r = client.post("/snapshots", {"snapshot": {"volume_id": vol["id"], "name": "s1"}})
    assert r.status_code == 202, r.text
    snap = client.wait("snapshot", r.json()["snapshot"]["id"], {"available", "error"})
    write_pattern(path, 2, [(MiB, MiB)])  # the volume moves on; the snapshot does not
    incr = backup_of(client, vol["id"], incremental=True, snapshot_id=snap["id"])
    assert incr["status"] == "available", incr["fail_reason"]
    assert incr["is_incremental"] and incr["snapshot_id"] == snap["id"]
    assert incr["data_timestamp"] == snap["created_at"]
    assert client.get(f"/snapshots/{snap['id']}").json()["snapshot"]["status"] == "available"
    parent = client.get(f"/backups/{full['id']}").json()["backup"]
    assert parent["has_dependent_backups"] is True
    r = client.delete(f"/backups/{full['id']}")
    assert r.status_code == 400 and "Incremental backups exist" in r.text

    # Restoring the incremental gives the snapshot's bytes, not the volume's current ones.
    target = client.post(f"/backups/{incr['id']}/restore", {"restore": {}}).json()["restore"]
    assert client.wait("volume", target["volume_id"], {"available", "error"})["status"] == \
        "available"
    with open(volume_file(settings, target["volume_id"]), "rb") as f:
        head = f.read(4 * MiB)
    with open(path, "rb") as f:
        current = f.read(4 * MiB)
    assert head != current
    assert head == random.Random(1).randbytes(4 * MiB)  # exactly the data at snapshot time


def test_restore_failure_paths(settings, db, client, admin, worker):
    vol = client.create_volume(size=1)
    write_pattern(volume_file(settings, vol["id"]), 3, [(0, 8 * MiB)])
    backup = backup_of(client, vol["id"])
    files = [p for p in store_files(settings, backup["container"]) if p.name != "manifest.json"]
    assert files
    with open(files[0], "r+b") as f:  # flip a byte in a data object
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    other = client.create_volume(size=1)
    r = client.post(f"/backups/{backup['id']}/restore", {"restore": {"volume_id": other["id"]}})
    assert r.status_code == 202
    assert client.wait("volume", other["id"], {"available", "error_restoring"})["status"] == \
        "error_restoring"
    assert client.wait("backup", backup["id"], {"available"})["status"] == "available"
    with db.scope(write=False) as s:
        job = s.scalar(select(Job).where(Job.resource_id == backup["id"],
                                         Job.op == "backup_restore"))
        assert job.state == "failed" and "IntegrityError" in job.error
    # Restoring to a new volume: the new volume ends in error, never available.
    r = client.post(f"/backups/{backup['id']}/restore", {"restore": {"name": "x"}})
    new_id = r.json()["restore"]["volume_id"]
    assert client.wait("volume", new_id, {"available", "error"})["status"] == "error"
    # Wrong inputs are refused before anything changes.
    small_backup_vol = client.create_volume(size=2)
    big = backup_of(client, small_backup_vol["id"])
    r = client.post(f"/backups/{big['id']}/restore", {"restore": {"volume_id": vol["id"]}})
    assert r.status_code == 400 and "smaller than backup size" in r.text
    assert client.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "available"
    assert client.get(f"/backups/{big['id']}").json()["backup"]["status"] == "available"


def test_delete_failure_then_force_delete(settings, db, client, admin, worker):
    vol = client.create_volume(size=1)
    write_pattern(volume_file(settings, vol["id"]), 4, [(0, MiB)])
    backup = backup_of(client, vol["id"])
    manifest = Path(settings.backup_path) / backup["container"] / f"backup_{backup['id']}" / \
        "manifest.json"
    assert manifest.exists()
    if subprocess.run(["chattr", "+i", str(manifest)], capture_output=True).returncode:
        pytest.skip("chattr +i is not supported on this filesystem")
    try:
        assert client.delete(f"/backups/{backup['id']}").status_code == 202
        failed = client.wait("backup", backup["id"], {"error_deleting", "deleted"})
        assert failed["status"] == "error_deleting"
        assert "Operation not permitted" in failed["fail_reason"]
        r = client.delete(f"/backups/{backup['id']}")
        assert r.status_code == 400 and "available or error" in r.text
    finally:
        subprocess.run(["chattr", "-i", str(manifest)], check=True)
    assert admin.post(f"/backups/{backup['id']}/action",
                      {"os-force_delete": None}).status_code == 202
    client.wait("backup", backup["id"], {"deleted"})
    assert store_files(settings, backup["container"]) == []


def test_reset_status_from_any_state(settings, db, client, admin, worker):
    vol = client.create_volume(size=1)
    backup = backup_of(client, vol["id"])
    for status in ("error", "available", "ERROR"):
        r = admin.post(f"/backups/{backup['id']}/action", {"os-reset_status": {"status": status}})
        assert r.status_code == 202, r.text
        assert client.get(f"/backups/{backup['id']}").json()["backup"]["status"] == status.lower()
    for bad in ({"status": "creating"}, {}, {"status": "available", "x": 1}):
        r = admin.post(f"/backups/{backup['id']}/action", {"os-reset_status": bad})
        assert r.status_code == 400, (bad, r.text)
    r = client.post(f"/backups/{backup['id']}/action", {"os-reset_status": {"status": "error"}})
    assert r.status_code == 403


def test_export_delete_import_revives_the_same_id(settings, db, client, admin, worker):
    vol = client.create_volume(size=1)
    write_pattern(volume_file(settings, vol["id"]), 5, [(2 * MiB, 3 * MiB)])
    backup = backup_of(client, vol["id"], name="exp")
    record = admin.get(f"/backups/{backup['id']}/export_record").json()["backup-record"]
    decoded = json.loads(base64.b64decode(record["backup_url"]))
    assert decoded["id"] == backup["id"] and decoded["size"] == 1
    r = admin.post("/backups/import_record", {"backup-record": record})
    assert r.status_code == 400 and "already exists" in r.text

    # Deleting the row (not the objects: they stay in the store) then importing revives it.
    with db.scope() as s:
        s.execute(update(Backup).where(Backup.id == backup["id"]).values(
            deleted=True, status="deleted", deleted_at=utcnow()))
        quota.release(s, "demo", {"backups": 1, "backup_gigabytes": 1}, now=utcnow())
    r = admin.post("/backups/import_record", {"backup-record": record})
    assert r.status_code == 201, r.text
    assert r.json()["backup"]["id"] == backup["id"]
    imported = admin.wait("backup", backup["id"], {"available", "error"})
    assert imported["status"] == "available", imported["fail_reason"]
    assert imported["name"] == "exp" and imported["volume_id"] == vol["id"]
    target = admin.create_volume(size=1)
    admin.post(f"/backups/{backup['id']}/restore", {"restore": {"volume_id": target["id"]}})
    assert admin.wait("volume", target["id"], {"available", "error_restoring"})["status"] == \
        "available"
    assert volume_file(settings, target["id"]).read_bytes() == \
        volume_file(settings, vol["id"]).read_bytes()

    # A record pointing at objects that are not in the store ends in error.
    decoded.update(id="6f1c0e3a-1111-4222-8333-944455556666",
                   service_metadata="backup_6f1c0e3a-1111-4222-8333-944455556666")
    bad = dict(record, backup_url=base64.b64encode(json.dumps(decoded).encode()).decode())
    r = admin.post("/backups/import_record", {"backup-record": bad})
    assert r.status_code == 201
    failed = admin.wait("backup", decoded["id"], {"available", "error"})
    assert failed["status"] == "error" and "manifest" in failed["fail_reason"]
    for junk in ({"backup_service": record["backup_service"], "backup_url": "!!"},
                 {"backup_service": record["backup_service"],
                  "backup_url": base64.b64encode(b"[1]").decode()},
                 {"backup_service": record["backup_service"],
                  "backup_url": base64.b64encode(b'{"size": 1}').decode()}):
        r = admin.post("/backups/import_record", {"backup-record": junk})
        assert r.status_code == 400, (junk, r.text)


def _running(db, backup_id: str, op: str):
    def check():
        with db.scope(write=False) as s:
            job = s.scalar(select(Job).where(Job.resource_id == backup_id, Job.op == op))
            if job is None or job.state != "running":
                return False
            # The job's own progress: the backup row's is its create's (a restore's or a
            # verify's reports are the job's alone).
            return ((job.progress or {}).get("bytes_done") or 0) > 0 or (
                op == "backup_create" and (s.get(Backup, backup_id).progress_bytes or 0) > 0)
    return check


def test_force_delete_cancels_a_running_backup(settings, db, client, admin, worker):
    vol = client.create_volume(size=2)
    fill_random(volume_file(settings, vol["id"]), 2 * GiB)
    backup = backup_of(client, vol["id"], expect=None)
    wait_for(_running(db, backup["id"], "backup_create"), timeout=30, interval=0.01,
             what="the backup to be writing")
    assert admin.post(f"/backups/{backup['id']}/action",
                      {"os-force_delete": {}}).status_code == 202
    client.wait("backup", backup["id"], {"deleted"}, timeout=60)
    with db.scope(write=False) as s:
        create = s.scalar(select(Job).where(Job.resource_id == backup["id"],
                                            Job.op == "backup_create"))
        assert create.state == "cancelled", (create.state, create.error)
        b = s.get(Backup, backup["id"])
        assert b.progress_bytes < 2 * GiB  # stopped part way
        assert quota.usage(s, "demo")["backups"] == (0, 0)
        assert quota.usage(s, "demo")["backup_gigabytes"] == (0, 0)
    assert store_files(settings, b.container) == []
    assert client.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "available"


@pytest.mark.parametrize("how", ["reset", "force_delete"])
def test_cancelled_restore_leaves_the_target_in_error(settings, db, client, admin, worker, how):
    vol = client.create_volume(size=2)
    fill_random(volume_file(settings, vol["id"]), 2 * GiB)
    backup = backup_of(client, vol["id"])
    assert backup["status"] == "available"
    target = client.create_volume(size=2)
    r = client.post(f"/backups/{backup['id']}/restore", {"restore": {"volume_id": target["id"]}})
    assert r.status_code == 202
    wait_for(_running(db, backup["id"], "backup_restore"), timeout=30, interval=0.01,
             what="the restore to be writing")
    if how == "reset":
        r = admin.post(f"/backups/{backup['id']}/action", {"os-reset_status": {"status": "error"}})
    else:
        r = admin.post(f"/backups/{backup['id']}/action", {"os-force_delete": None})
    assert r.status_code == 202, r.text
    assert client.wait("volume", target["id"], {"error", "available", "error_restoring"},
                       timeout=60)["status"] == "error"
    expected = {"reset": "error", "force_delete": "deleted"}[how]
    assert client.wait("backup", backup["id"], {expected}, timeout=60)["status"] == expected


def test_reconcile_repairs_and_reports_drift(settings, db, client, worker, control_plane):
    from orchestrator.tasks import make_celery
    vol = client.create_volume(size=1)
    backup_of(client, vol["id"])
    with db.scope() as s:
        s.execute(update(quota.QuotaUsage).where(quota.QuotaUsage.resource == "backups")
                  .values(in_use=42))
    make_celery(settings).send_task("orchestrator.tasks.reconcile_quota", queue="orchestrator",
                                    ignore_result=True)

    def repaired():
        with db.scope(write=False) as s:
            return quota.usage(s, "demo")["backups"] == (1, 0)
    wait_for(repaired, timeout=30, interval=0.2, what="reconcile")
    wait_for(lambda: "quota drift repaired" in control_plane.log, timeout=10,
             what="the drift report")
    assert "'in_use': 42, 'actual': 1" in control_plane.log


def test_verify_records_the_result_and_catches_corruption(settings, db, client, admin, worker):
    vol = client.create_volume(size=1)
    write_pattern(volume_file(settings, vol["id"]), 9, [(0, 6 * MiB), (300 * MiB, MiB)])
    backup = backup_of(client, vol["id"])
    r = client.post(f"/backups/{backup['id']}/action", {"os-verify": {}})
    assert r.status_code == 403
    assert admin.post(f"/backups/{backup['id']}/action", {"os-verify": {}}).status_code == 202

    def verified(expected):
        def check():
            v = client.get(f"/backups/{backup['id']}").json()["backup"]["verification"]
            return v if v["status"] == expected else None
        return check
    v = wait_for(verified("ok"), timeout=30, interval=0.1, what="verify ok")
    assert v["checked_at"] and "verified" in v["message"]

    data = [p for p in store_files(settings, backup["container"]) if p.name != "manifest.json"]
    with open(data[0], "r+b") as f:
        f.truncate(10)
    assert admin.post(f"/backups/{backup['id']}/action", {"os-verify": None}).status_code == 202
    v = wait_for(verified("failed"), timeout=30, interval=0.1, what="verify failed")
    assert "problem" in v["message"]
    assert client.get(f"/backups/{backup['id']}").json()["backup"]["status"] == "available"
