"""Point 7 of the walking skeleton: volume → backup → restore over HTTP, real worker."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from orch_testlib import volume_file
from orch_testlib import write_pattern

MiB = 1024 * 1024


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * MiB), b""):
            h.update(block)
    return h.hexdigest()


def test_backup_and_restore_to_new_volume(settings, client, worker):
    vol = client.create_volume(size=1, name="src")
    assert vol["status"] == "available"
    src = volume_file(settings, vol["id"])
    write_pattern(src, 7, [(0, 3 * MiB), (200 * MiB, 5 * MiB), (1024 * MiB - 4096, 4096)])

    r = client.post("/backups", {"backup": {"volume_id": vol["id"], "name": "b1"}})
    assert r.status_code == 202, r.text
    backup_id = r.json()["backup"]["id"]
    # Written before the 202: a poller never sees the pre-backup state.
    assert client.get(f"/volumes/{vol['id']}").json()["volume"]["status"] in (
        "backing-up", "available")
    backup = client.wait("backup", backup_id, {"available", "error"})
    assert backup["status"] == "available", backup["fail_reason"]
    assert backup["size"] == 1 and backup["object_count"] >= 1
    assert client.wait("volume", vol["id"], {"available"})["status"] == "available"

    r = client.post(f"/backups/{backup_id}/restore", {"restore": {"name": "copy"}})
    assert r.status_code == 202, r.text
    restore = r.json()["restore"]
    assert restore["backup_id"] == backup_id and restore["volume_name"] == "copy"
    target = client.wait("volume", restore["volume_id"], {"available", "error"})
    assert target["status"] == "available"
    assert client.get(f"/backups/{backup_id}").json()["backup"]["status"] == "available"
    assert sha256(volume_file(settings, target["id"])) == sha256(src)
    assert target["metadata"].get("src_backup_id") == backup_id


def test_restore_into_existing_volume_overwrites_it(settings, client, worker):
    vol = client.create_volume(size=1)
    write_pattern(volume_file(settings, vol["id"]), 1, [(MiB, 2 * MiB)])
    backup_id = client.post("/backups", {"backup": {"volume_id": vol["id"]}}).json()["backup"]["id"]
    assert client.wait("backup", backup_id, {"available", "error"})["status"] == "available"

    other = client.create_volume(size=1)
    # Data the backup does not have (including where the backup is zero) must go.
    write_pattern(volume_file(settings, other["id"]), 2, [(0, 8 * MiB), (700 * MiB, MiB)])
    r = client.post(f"/backups/{backup_id}/restore", {"restore": {"volume_id": other["id"]}})
    assert r.status_code == 202, r.text
    assert client.get(f"/volumes/{other['id']}").json()["volume"]["status"] in (
        "restoring-backup", "available")
    assert client.wait("volume", other["id"], {"available", "error_restoring"})["status"] == \
        "available"
    assert sha256(volume_file(settings, other["id"])) == \
        sha256(volume_file(settings, vol["id"]))


def test_cinder_cli_drives_the_service(settings, api_server, worker):
    """The README's example with the unmodified `cinder` CLI."""
    env = {**os.environ, "OS_AUTH_TYPE": "noauth", "OS_USER_ID": "demo",
           "OS_PROJECT_ID": "demo", "CINDER_ENDPOINT": f"{api_server.url}/v3"}
    cinder = str(Path(sys.executable).parent / "cinder")

    def run(*args: str) -> str:
        out = subprocess.run([cinder, *args], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr + out.stdout
        return out.stdout

    def wait_show(command: str, name: str, want: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = [line for line in run(command, name).splitlines() if "| status " in line]
            if rows and f" {want} " in rows[0]:
                return
            time.sleep(0.2)
        raise AssertionError(f"{name} never became {want}")

    run("create", "--name", "clivol", "1")
    wait_show("show", "clivol", "available")
    run("backup-create", "--name", "clibackup", "clivol")
    wait_show("backup-show", "clibackup", "available")
    listing = run("backup-list")
    assert "clibackup" in listing and "available" in listing
    run("backup-restore", "--name", "clirestored", "clibackup")
    wait_show("show", "clirestored", "available")
