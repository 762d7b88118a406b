"""Encryption at rest through the API and real workers: every object is ciphertext, the
detail says so, rotation and re-wrapping keep every backup restorable, a worker without
a KEK does not start, an import whose keys do not unwrap is refused."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from orch_testlib import WorkerProcess
from sqlalchemy import func
from sqlalchemy import select
from test_shared_blocks import Chain
from test_shared_blocks import store_names

from orchestrator.keys import create_kek_file
from orchestrator.models import Backup
from orchestrator.models import ProjectKey
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
