"""Shared-block backups through the API and real workers: any backup deletable, the
garbage collector, and SIGKILL of the worker at each crash point of a backup that re-uses
blocks, of a delete and of a collection. After each scenario every live backup restores
byte-identical and, after a collection, the store holds no object nobody references."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from orch_testlib import BeatProcess
from orch_testlib import WorkerProcess
from orch_testlib import volume_file
from orch_testlib import wait_for
from orch_testlib import write_pattern
from sqlalchemy import select

from orchestrator.models import Backup
from orchestrator.models import BackupObject
from orchestrator.models import Job
from orchestrator.models import StoredObject

MiB = 1024 * 1024
GiB = 1024 * MiB


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def store_names(settings) -> set[str]:
    """The backups' objects in the store (not the projects' key records)."""
    root = Path(settings.backup_path)
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".")} - key_records(settings)


def key_records(settings) -> set[str]:
    """The projects' key records in the store (workers/keyrecords.py)."""
    root = Path(settings.backup_path)
    return {str(p.relative_to(root)) for p in (root / "_project_keys").rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def referenced(db) -> set[str]:
    with db.scope(write=False) as s:
        return set(s.scalars(select(StoredObject.name).where(StoredObject.ref_count > 0)))


def live_manifests(db) -> set[str]:
    with db.scope(write=False) as s:
        return {f"{c}/{p}/manifest.json" for c, p in s.execute(
            select(Backup.container, Backup.service_metadata).where(
                Backup.deleted.is_(False), Backup.status == "available"))}


def assert_store_clean(settings, db) -> None:
    """Nothing in the store but what live backups reference (and their manifests)."""
    extra = store_names(settings) - referenced(db) - live_manifests(db)
    assert not extra, sorted(extra)[:10]


def assert_referenced_present(settings, db) -> None:
    missing = referenced(db) - store_names(settings)
    assert not missing, sorted(missing)[:10]


class Chain:
    """A volume and its backups; each backup remembers the volume's digest when taken."""

    def __init__(self, settings, client):
        self.settings, self.client = settings, client
        self.volume = client.create_volume(size=1)
        self.path = volume_file(settings, self.volume["id"])
        self.digests: dict[str, str] = {}
        self.order: list[str] = []

    def change(self, seed: int) -> None:
        # a few MiB spread over the volume, some inside blocks earlier backups stored
        write_pattern(self.path, seed, [((seed * 37 % 200) * 4 * MiB + k * 16 * 1024, 6000)
                                        for k in range(40)] + [(seed * MiB, 2 * MiB)])

    def backup(self, incremental: bool, wait: bool = True) -> str:
        r = self.client.post("/backups", {"backup": {"volume_id": self.volume["id"],
                                                     "incremental": incremental}})
        assert r.status_code == 202, r.text
        backup_id = r.json()["backup"]["id"]
        if wait:
            got = self.client.wait("backup", backup_id, {"available", "error"}, timeout=60)
            assert got["status"] == "available", got
            self.digests[backup_id] = sha256_file(self.path)
            self.order.append(backup_id)
        return backup_id

    def build(self, depth: int) -> list[str]:
        for i in range(depth):
            self.change(i + 1)
            self.backup(incremental=i > 0)
        return list(self.order)

    def restores_identical(self, backup_id: str) -> None:
        r = self.client.post(f"/backups/{backup_id}/restore", {"restore": {}})
        assert r.status_code == 202, r.text
        vol_id = r.json()["restore"]["volume_id"]
        self.client.wait("volume", vol_id, {"available"}, timeout=60)
        assert sha256_file(volume_file(self.settings, vol_id)) == self.digests[backup_id]
        assert self.client.delete(f"/volumes/{vol_id}").status_code == 202

    def delete(self, backup_id: str) -> None:
        r = self.client.delete(f"/backups/{backup_id}")
        assert r.status_code == 202, r.text
        self.client.wait("backup", backup_id, {"deleted"}, timeout=60)
        self.order.remove(backup_id)
        del self.digests[backup_id]


def crashed(worker, point: str) -> None:
    """Wait until the job's process killed itself at ``point``, then kill the rest of the
    worker too (the whole node goes down with it)."""
    wait_for(lambda: f"crash point {point} reached" in worker.log, timeout=60,
             what=f"the crash at {point}")
    worker.kill()


def run_gc(admin, scope: str = "full", timeout: float = 60) -> dict:
    r = admin.post("/backup-gc", {"gc": {"scope": scope}})
    assert r.status_code == 202, r.text
    gc_id = r.json()["gc"]["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gc = admin.get(f"/backup-gc/{gc_id}").json()["gc"]
        if gc["status"] in ("succeeded", "failed", "cancelled"):
            return gc
        time.sleep(0.2)
    raise AssertionError(f"collection {gc_id} did not end")


@pytest.fixture
def shared(settings):
    """Settings of these tests: collections free unknown objects at once."""
    settings.gc_grace = 0.0
    return settings


def test_cinder_rule_by_default_then_any_backup_is_deletable(shared, db, client, admin,
                                                            worker):
    chain = Chain(shared, client)
    b1, b2, b3, b4 = chain.build(4)
    r = client.delete(f"/backups/{b2}")
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == \
        "Invalid backup: Incremental backups exist for this backup."
    shared.backup_delete_any = True
    chain.delete(b2)                      # the middle of the chain
    detail = client.get(f"/backups/{b1}").json()["backup"]
    assert detail["has_dependent_backups"] is True          # b3 builds on b1 now
    with db.scope(write=False) as s:
        assert s.get(Backup, b3).parent_id == b1
        assert s.get(Backup, b1).num_dependent_backups == 1
    chain.delete(b1)                      # the full one, with dependents
    for backup_id in (b3, b4):
        chain.restores_identical(backup_id)
    gc = run_gc(admin)
    assert gc["status"] == "succeeded", gc
    assert_store_clean(shared, db)
    assert_referenced_present(shared, db)
    chain.change(99)
    chain.backup(incremental=True)        # an incremental on what is left
    for backup_id in chain.order:
        chain.restores_identical(backup_id)


def test_collection_frees_what_a_delete_released_and_reports_it(shared, db, client, admin,
                                                                worker):
    shared.backup_delete_any = True
    chain = Chain(shared, client)
    b1, b2, b3 = chain.build(3)
    before = store_names(shared)
    chain.delete(b2)
    # the delete queued a collection of what it released
    wait_for(lambda: not (store_names(shared) - referenced(db) - live_manifests(db)),
             timeout=30, what="the released objects to be freed")
    gone = before - store_names(shared)
    manifest = {name for name in gone if name.endswith("/manifest.json")}
    assert len(manifest) == 1                     # the delete itself removed that one
    freed = gone - manifest
    assert freed and all(f"backup_{b2}/" in name for name in freed)
    runs = admin.get("/backup-gc").json()["gcs"]
    assert runs and runs[0]["scope"] == "released" and runs[0]["status"] == "succeeded"
    assert runs[0]["result"]["objects_freed"] == len(freed)
    assert runs[0]["result"]["bytes_freed"] > 0
    for backup_id in (b1, b3):
        chain.restores_identical(backup_id)
    assert client.post("/backup-gc", {"gc": {}}).status_code == 403   # admins only


def test_worker_killed_after_writing_an_incremental_that_reuses_blocks(
        shared, db, client, admin, start_worker):
    start = start_worker("crashy", "nova")
    chain = Chain(shared, client)
    (b1,) = chain.build(1)
    start.kill()
    crashing = start_worker("crashy", "nova", env={"ORCH_CRASH_POINT": "backup:written"})
    chain.change(5)
    b2 = chain.backup(incremental=True, wait=False)
    crashed(crashing, "backup:written")
    start_worker("crashy", "nova")        # its restart ends the job it left
    assert client.wait("backup", b2, {"error", "available"}, timeout=30)["status"] == "error"
    assert_referenced_present(shared, db)
    chain.restores_identical(b1)
    assert run_gc(admin)["status"] == "succeeded"
    assert_store_clean(shared, db)
    chain.backup(incremental=True)
    for backup_id in chain.order:
        chain.restores_identical(backup_id)


def test_worker_killed_during_a_delete(shared, db, client, admin, start_worker):
    shared.backup_delete_any = True
    normal = start_worker("crashy", "nova")
    chain = Chain(shared, client)
    b1, b2, b3 = chain.build(3)
    normal.kill()
    crashing = start_worker("crashy", "nova", env={"ORCH_CRASH_POINT": "delete:manifest_gone"})
    assert client.delete(f"/backups/{b2}").status_code == 202
    crashed(crashing, "delete:manifest_gone")
    start_worker("crashy", "nova")
    got = client.wait("backup", b2, {"error_deleting", "deleted"}, timeout=30)
    assert got["status"] == "error_deleting"
    # Its manifest is gone but its references stay until a delete completes: all there.
    assert_referenced_present(shared, db)
    for backup_id in (b1, b3):
        chain.restores_identical(backup_id)
    r = admin.post(f"/backups/{b2}/action", {"os-force_delete": {}})
    assert r.status_code == 202, r.text
    client.wait("backup", b2, {"deleted"}, timeout=60)
    chain.order.remove(b2)
    assert run_gc(admin)["status"] == "succeeded"
    assert_store_clean(shared, db)
    for backup_id in (b1, b3):
        chain.restores_identical(backup_id)


@pytest.mark.parametrize("point", ["gc:claimed", "gc:deleted", "gc:sweep"])
def test_worker_killed_during_a_collection(point, shared, db, client, admin, start_worker):
    shared.backup_delete_any = True
    normal = start_worker("crashy", "nova", env={"ORCH_GC_AFTER_DELETE": "false"})
    chain = Chain(shared, client)
    b1, b2, b3 = chain.build(3)
    chain.delete(b2)
    # leftovers no row knows, as an interrupted attempt leaves them, under b2's prefix
    with db.scope(write=False) as s:
        deleted = s.get(Backup, b2)
        stray = Path(shared.backup_path) / deleted.container / deleted.service_metadata \
            / "data-99999999"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(os.urandom(1000))
    past = time.time() - 10
    os.utime(stray, (past, past))
    normal.kill()
    crashing = start_worker("crashy", "nova", env={"ORCH_CRASH_POINT": point,
                                                   "ORCH_GC_AFTER_DELETE": "false"})
    r = admin.post("/backup-gc", {"gc": {"scope": "full"}})
    assert r.status_code == 202
    crashed(crashing, point)
    start_worker("crashy", "nova")
    assert_referenced_present(shared, db)
    for backup_id in (b1, b3):
        chain.restores_identical(backup_id)
    gc = run_gc(admin)
    assert gc["status"] == "succeeded", gc
    assert not stray.exists()
    assert_store_clean(shared, db)
    for backup_id in (b1, b3):
        chain.restores_identical(backup_id)


def test_references_rebuilt_from_the_store_after_their_rows_are_lost(shared, db, client,
                                                                     worker):
    """The rows lost (a database restored from a dump that lacks them): the rebuild sets
    them from the manifests, then a collection (the CLI) frees nothing anyone needs."""
    chain = Chain(shared, client)
    chain.build(3)
    before = referenced(db)
    with db.scope() as s:
        s.execute(BackupObject.__table__.delete())
        s.execute(StoredObject.__table__.delete())
    env = {**os.environ, **shared.as_env()}
    rebuilt = subprocess.run([sys.executable, "-m", "orchestrator", "storage", "rebuild-refs"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    report = json.loads(rebuilt.stdout.strip().splitlines()[-1])
    assert report["backups_checked"] == 3 and report["problems"] == []
    assert report["references_added"] >= len(before)
    assert referenced(db) == before
    gc = subprocess.run([sys.executable, "-m", "orchestrator", "storage", "gc"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr + gc.stdout
    assert json.loads(gc.stdout.strip().splitlines()[-1])["status"] == "succeeded"
    assert_store_clean(shared, db)
    for backup_id in chain.order:
        chain.restores_identical(backup_id)


def test_beat_collects_every_known_store(shared, db, client, start_worker):
    """With a short ORCH_GC_INTERVAL, beat queues full collections of the store by itself."""
    shared.gc_interval = 2.0
    start_worker("node-a", "nova")
    maintenance = WorkerProcess(shared, "control", "nova", maintenance=True).wait_ready()
    beat = BeatProcess(shared)
    try:
        chain = Chain(shared, client)
        chain.build(1)

        def collections():
            with db.scope(write=False) as s:
                return s.scalars(select(Job).where(Job.op == "store_gc",
                                                   Job.state == "succeeded")).all()
        wait_for(lambda: len(collections()) >= 2, timeout=60, what="two scheduled collections")
        runs = collections()
        assert {job.params.get("scope") for job in runs} == {"full"}
        assert all(job.result["store"].startswith("posix:") for job in runs)
    finally:
        beat.stop()
        maintenance.stop()


def test_an_incremental_on_a_parent_missing_an_index_object_is_a_full_backup(
        shared, db, client, worker):
    """The parent's index object gone from the store: the incremental asked for succeeds as
    a full backup that says why, references nothing of the parent (its pins released),
    and restores byte-identical; the parent keeps no dependent."""
    chain = Chain(shared, client)
    _b1, b2 = chain.build(2)
    indexes = sorted(n for n in store_names(shared) if f"backup_{b2}/index-" in n)
    assert len(indexes) >= 1
    (Path(shared.backup_path) / indexes[-1]).unlink()
    chain.change(7)
    b3 = chain.backup(incremental=True)
    detail = client.get(f"/backups/{b3}").json()["backup"]
    assert detail["is_incremental"] is False
    assert detail["fail_reason"].startswith("parent backup unusable (")
    assert indexes[-1] in detail["fail_reason"]
    assert detail["fail_reason"].endswith("took a full backup")
    assert client.get(f"/backups/{b2}").json()["backup"]["has_dependent_backups"] is False
    with db.scope(write=False) as s:
        row = s.get(Backup, b3)
        assert row.parent_id is None and row.data_format == 2
        manifest = f"{row.container}/{row.service_metadata}/manifest.json"
        assert s.get(Backup, b2).num_dependent_backups == 0
        names = set(s.scalars(select(StoredObject.name).join(
            BackupObject, BackupObject.object_id == StoredObject.id)
            .where(BackupObject.backup_id == b3)))
    assert names and all(f"backup_{b3}/" in name for name in names)
    assert names <= store_names(shared)
    assert {n for n in store_names(shared) if f"backup_{b3}/" in n} == \
        names | {manifest}
    chain.restores_identical(b3)
    chain.change(8)
    b4 = chain.backup(incremental=True)               # builds on the full one
    assert client.get(f"/backups/{b4}").json()["backup"]["is_incremental"] is True
    chain.restores_identical(b4)
