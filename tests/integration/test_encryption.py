"""Encryption at rest through the API and real workers: every object is ciphertext, the
detail says so, rotation and re-wrapping keep every backup restorable, a worker without
a KEK does not start, an import whose keys do not unwrap is refused, the store's key
records bring lost key rows back (and no collection frees them, and an edited one is
refused), and an import into another project registers the keys for it."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from orch_testlib import WorkerProcess
from orch_testlib import wait_for
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import update
from test_shared_blocks import Chain
from test_shared_blocks import assert_store_clean
from test_shared_blocks import key_records
from test_shared_blocks import run_gc
from test_shared_blocks import store_names

from orchestrator import keys as keymod
from orchestrator import quota
from orchestrator.db import utcnow
from orchestrator.keys import create_kek_file
from orchestrator.models import Backup
from orchestrator.models import ProjectKey
from workers.datapath.format import decode_manifest
from workers.datapath.format import encode_manifest
from workers.stores.encrypted import MAGIC

ROOT = Path(__file__).resolve().parents[2]


def _cli(settings, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings.as_env()}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=str(ROOT),
                          env=env, capture_output=True, text=True, timeout=60)


def test_encrypted_chain_rotation_and_rewrap_keep_every_backup_restorable(
        settings, db, client, admin, start_worker, tmp_path):
    worker = start_worker("node-a", "nova")
    chain = Chain(settings, client)
    b1, b2 = chain.build(2)
    detail = client.get(f"/backups/{b2}").json()["backup"]
    assert detail["encrypted"] is True and detail["encryption_data_key_id"]
    with db.scope(write=False) as s:
        project = s.get(Backup, b1).project_id
        first_key = s.get(Backup, b1).encryption_key_id
    assert first_key and detail["encryption_data_key_id"] == first_key
    for name in store_names(settings):
        assert (Path(settings.backup_path) / name).read_bytes().startswith(MAGIC), name

    rotated = _cli(settings, "keys", "rotate", "--project", project)
    assert rotated.returncode == 0, rotated.stderr
    chain.change(7)
    b3 = chain.backup(incremental=True)
    after = client.get(f"/backups/{b3}").json()["backup"]
    assert after["is_incremental"] is True
    assert after["encryption_data_key_id"] not in (None, first_key)
    for backup_id in (b1, b2, b3):
        chain.restores_identical(backup_id)

    new_kek = str(tmp_path / "new-kek")
    create_kek_file(new_kek)
    rewrapped = _cli(settings, "keys", "rewrap", "--new-kek-file", new_kek)
    assert rewrapped.returncode == 0, rewrapped.stderr
    assert "re-wrapped 3 key(s)" in rewrapped.stdout
    before = {n: (Path(settings.backup_path) / n).read_bytes() for n in store_names(settings)}
    worker.stop()
    settings.kek_file = new_kek
    start_worker("node-b", "nova")
    for backup_id in (b1, b2, b3):
        chain.restores_identical(backup_id)
    # Re-wrapping touched no backup data.
    assert all((Path(settings.backup_path) / n).read_bytes() == data
               for n, data in before.items())


def test_a_worker_without_a_kek_does_not_start(settings, tmp_path):
    settings.kek_file = str(tmp_path / "no-such-kek")
    env = {**os.environ, **settings.as_env()}
    done = subprocess.run([sys.executable, "-m", "workers", "--host", "nokek"],
                          cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no usable key encryption key" in done.stderr and "not starting" in done.stderr
    # Explicitly off, it starts (and would write plaintext).
    settings.encryption = False
    proc = WorkerProcess(settings, "plain", "nova").wait_ready()
    proc.stop()


def test_import_whose_wrapped_key_cannot_be_unwrapped_is_a_400_and_writes_nothing(
        settings, db, client, admin, worker):
    chain = Chain(settings, client)
    (b1,) = chain.build(1)
    exported = admin.get(f"/backups/{b1}/export_record").json()["backup-record"]
    record = json.loads(base64.b64decode(exported["backup_url"]))
    assert record["encryption_key_id"] and record["encryption"]["keys"]
    assert all("wrapped" in k for k in record["encryption"]["keys"])
    # The same record, as another deployment (another KEK) would have wrapped it.
    tampered = dict(record, id="0" * 8 + "-0000-4000-8000-" + "0" * 12)
    keys = [dict(k) for k in record["encryption"]["keys"]]
    raw = bytearray(base64.b64decode(keys[0]["wrapped"]))
    raw[-1] ^= 1
    keys[0]["wrapped"] = base64.b64encode(bytes(raw)).decode()
    tampered["encryption"] = {"keys": keys}
    with db.scope(write=False) as s:
        rows_before = s.scalar(select(func.count()).select_from(Backup))
        keys_before = s.scalar(select(func.count()).select_from(ProjectKey))
    url = base64.b64encode(json.dumps(tampered).encode()).decode()
    r = admin.post("/backups/import_record",
                   {"backup-record": {"backup_service": exported["backup_service"],
                                      "backup_url": url}})
    assert r.status_code == 400, r.text
    assert "cannot be unwrapped" in r.json()["badRequest"]["message"]
    with db.scope(write=False) as s:
        assert s.scalar(select(func.count()).select_from(Backup)) == rows_before
        assert s.scalar(select(func.count()).select_from(ProjectKey)) == keys_before


def _rebuild(settings) -> tuple[int, dict]:
    done = _cli(settings, "storage", "rebuild-refs")
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def _key_rows(db, project: str) -> set[tuple[str, str, bool]]:
    with db.scope(write=False) as s:
        return {(r.key_id, r.purpose, r.retired_at is None)
                for r in keymod.project_rows(s, project)}


def test_key_rows_lost_are_rebuilt_from_the_store_and_an_edited_record_is_refused(
        settings, db, client, worker):
    chain = Chain(settings, client)
    b1, b2 = chain.build(2)
    with db.scope(write=False) as s:
        project = s.get(Backup, b1).project_id
    assert _cli(settings, "keys", "rotate", "--project", project).returncode == 0
    chain.change(7)
    b3 = chain.backup(incremental=True)           # writes the record with the new key
    held = _key_rows(db, project)
    assert len(held) == 3
    (record,) = key_records(settings)
    assert record == f"_project_keys/project_{project}/keyring.json"
    path = Path(settings.backup_path) / record
    original = path.read_bytes()
    assert b"wrapped" in original and not original.startswith(MAGIC)

    with db.scope() as s:                         # the database lost its key rows
        s.execute(ProjectKey.__table__.delete())
    r = client.post(f"/backups/{b1}/restore", {"restore": {}})
    lost = client.wait("volume", r.json()["restore"]["volume_id"],
                       {"available", "error_restoring", "error"}, timeout=60)
    assert lost["status"] != "available"          # without its keys nothing restores

    # An edited record (a retired key made current, its checksum made right) is refused.
    body = decode_manifest(original)
    for k in body["keys"]:
        k["retired_at"] = None
    path.write_bytes(encode_manifest(body))
    code, report = _rebuild(settings)
    assert code == 1 and report["keys_restored"] == 0
    assert any("does not match its seal" in p and "refused" in p
               for p in report["problems"]), report
    assert _key_rows(db, project) == set()

    path.write_bytes(original)
    code, report = _rebuild(settings)
    assert code == 0, report
    assert report["keys_restored"] == 3 and report["problems"] == []
    assert _key_rows(db, project) == held
    for backup_id in (b1, b2, b3):
        chain.restores_identical(backup_id)
    chain.change(8)                               # the identity key is back: incremental
    b4 = chain.backup(incremental=True)
    assert client.get(f"/backups/{b4}").json()["backup"]["is_incremental"] is True
    chain.restores_identical(b4)
    # The CLI writes the records: nothing to do now, the new key after a rotation.
    for rotate, written in ((False, 0), (True, 1)):
        if rotate:
            assert _cli(settings, "keys", "rotate", "--project", project).returncode == 0
        done = _cli(settings, "keys", "write-records")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {
            "projects": 1, "records_written": written, "problems": []}
    assert len(decode_manifest(path.read_bytes())["keys"]) == 4


def test_a_full_collection_after_deletes_keeps_the_key_record(settings, db, client, admin,
                                                              worker):
    settings.gc_grace = 0.0
    settings.backup_delete_any = True
    chain = Chain(settings, client)
    b1, b2, b3 = chain.build(3)
    (record,) = key_records(settings)
    before = (Path(settings.backup_path) / record).read_bytes()
    chain.delete(b1)
    chain.delete(b2)
    # Old enough for the sweep, known to no row, as is the stray next to it (freed).
    stray = Path(settings.backup_path) / record.replace("keyring.json", "stray")
    stray.write_bytes(b"x")
    with db.scope(write=False) as s:
        row = s.get(Backup, b1)
        gone = Path(settings.backup_path) / row.container / row.service_metadata / "data-9"
    gone.parent.mkdir(parents=True, exist_ok=True)
    gone.write_bytes(b"y" * 100)
    past = time.time() - 3600
    for p in (Path(settings.backup_path) / record, stray, gone):
        os.utime(p, (past, past))
    gc = run_gc(admin, "full")
    assert gc["status"] == "succeeded", gc
    assert gc["result"]["unknown_objects_freed"] == 1 and not gone.exists()
    stray.unlink()
    assert_store_clean(settings, db)
    assert key_records(settings) == {record}
    assert (Path(settings.backup_path) / record).read_bytes() == before
    chain.restores_identical(b3)
    # No backup container may lie under the records' prefix.
    r = client.post("/backups", {"backup": {"volume_id": chain.volume["id"],
                                            "container": "_project_keys/x"}})
    assert r.status_code == 400 and "reserved" in r.json()["badRequest"]["message"]


def test_import_into_another_project_registers_its_keys_as_extra_ones(
        settings, db, client, admin, worker):
    source = Chain(settings, client)
    (b1,) = source.build(1)
    own = Chain(settings, admin)                  # the importing project has its own keys
    (mine,) = own.build(1)
    with db.scope(write=False) as s:
        a_project, b_project = s.get(Backup, b1).project_id, s.get(Backup, mine).project_id
        a_key = s.get(Backup, b1).encryption_key_id
    assert a_project != b_project
    a_keys, b_keys = _key_rows(db, a_project), _key_rows(db, b_project)
    exported = admin.get(f"/backups/{b1}/export_record").json()["backup-record"]
    # The row goes (the objects stay in the store), then the admin imports it into B.
    with db.scope() as s:
        s.execute(update(Backup).where(Backup.id == b1).values(
            deleted=True, status="deleted", deleted_at=utcnow()))
        quota.release(s, a_project, {"backups": 1, "backup_gigabytes": 1}, now=utcnow())
    # An import that fails (its objects are not in the store) registers no key.
    record = json.loads(base64.b64decode(exported["backup_url"]))
    missing_id = "6f1c0e3a-1111-4222-8333-944455556666"
    broken = dict(record, id=missing_id, service_metadata=f"backup_{missing_id}")
    r = admin.post("/backups/import_record", {"backup-record": dict(
        exported, backup_url=base64.b64encode(json.dumps(broken).encode()).decode())})
    assert r.status_code == 201, r.text
    assert admin.wait("backup", missing_id, {"available", "error"})["status"] == "error"
    assert _key_rows(db, b_project) == b_keys
    assert not (Path(settings.backup_path) / "_project_keys" / f"project_{b_project}"
                / "keyring.json").read_bytes().count(a_key.encode())

    r = admin.post("/backups/import_record", {"backup-record": exported})
    assert r.status_code == 201, r.text
    got = admin.wait("backup", b1, {"available", "error"}, timeout=60)
    assert got["status"] == "available", got["fail_reason"]
    with db.scope(write=False) as s:
        assert s.get(Backup, b1).project_id == b_project
    # B holds A's keys as extra, non-current ones; its own stay current; A keeps its keys.
    after = _key_rows(db, b_project)
    assert after == b_keys | {(kid, purpose, False) for kid, purpose, _ in a_keys}
    assert _key_rows(db, a_project) == a_keys
    record = Path(settings.backup_path) / f"_project_keys/project_{b_project}/keyring.json"
    assert {k["key_id"] for k in decode_manifest(record.read_bytes())["keys"]} == \
        {kid for kid, _, _ in after}

    own.digests[b1] = source.digests[b1]
    own.restores_identical(b1)
    assert admin.post(f"/backups/{b1}/action", {"os-verify": {}}).status_code == 202
    verified = wait_for(lambda: (lambda v: v if v["status"] in ("ok", "failed") else None)(
        admin.get(f"/backups/{b1}").json()["backup"]["verification"]), timeout=60,
        what="the verification")
    assert verified["status"] == "ok", verified

    b_current = {kid for kid, purpose, current in b_keys if current and purpose == "data"}
    own.change(3)
    newer = own.backup(incremental=True)
    assert admin.get(f"/backups/{newer}").json()["backup"]["encryption_data_key_id"] in \
        b_current
    # An incremental in B on the imported backup: the digests are A's, so a full one.
    r = admin.post("/backups", {"backup": {"volume_id": source.volume["id"],
                                           "incremental": True}})
    assert r.status_code == 202, r.text
    inc = admin.wait("backup", r.json()["backup"]["id"], {"available", "error"}, timeout=60)
    assert inc["status"] == "available", inc
    assert inc["is_incremental"] is False
    assert "block digests (encryption) changed" in (inc["fail_reason"] or "")
    with db.scope(write=False) as s:
        assert s.get(Backup, inc["id"]).encryption_key_id in b_current
    assert a_key not in b_current
