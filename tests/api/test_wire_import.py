"""Export from one deployment, import into another that shares the backup store.

This is what export/import is for (a lost or rebuilt database): the record
brings the backup back under the same id, the data is verified against the
store, and it restores byte for byte. Driven with python-cinderclient.
"""
from __future__ import annotations

import hashlib

from orch_testlib import volume_file
from orch_testlib import write_pattern
from wire_drivers import CinderclientDriver
from wire_drivers import wait_for

MiB = 1024 * 1024


def _sha(path) -> str:
    # Streamed: reading a 1 GiB volume at once would raise this process's peak RSS, which
    # every later child inherits (the datapath memory test reads its children's peak).
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * MiB), b""):
            h.update(block)
    return h.hexdigest()


def test_import_into_a_second_deployment_restores_the_data(stacks):
    first = stacks("noauth")
    # A second deployment on the same store and the same key encryption key.
    second = stacks("noauth", backup_path=first.settings.backup_path,
                    kek_file=first.settings.kek_file)
    project = "dr"
    a_user = CinderclientDriver(first, first.creds(project), project, project_in_url=True)
    a_admin = CinderclientDriver(first, first.creds(project, "admin"), project,
                                 project_in_url=False)
    b_admin = CinderclientDriver(second, second.creds(project, "admin"), project,
                                 project_in_url=True)

    vol = a_user.create_volume("source")
    wait_for(lambda: a_user.volume(vol), {"available"})
    write_pattern(volume_file(first.settings, vol), 3, [(0, MiB), (300 * MiB, 2 * MiB)])
    bid = a_user.create_backup(vol, "precious", metadata={"k": "v"})
    assert wait_for(lambda: a_user.backup(bid), {"available", "error"})["status"] == "available"
    service, url = a_admin.export(bid)

    assert b_admin.backup(bid) is None
    assert b_admin.import_(service, url) == bid
    got = wait_for(lambda: b_admin.backup(bid), {"available", "error"})
    assert got["status"] == "available", got
    assert (got["name"], got["size"], got["metadata"]) == ("precious", 1, {"k": "v"})

    # A second import of a live backup is refused, and changes nothing.
    from cinderclient import exceptions
    try:
        b_admin.import_(service, url)
        raise AssertionError("importing an existing backup must fail")
    except exceptions.BadRequest as exc:
        assert "already exists" in str(exc)

    restored = b_admin.restore(bid, name="back")
    assert wait_for(lambda: b_admin.volume(restored), {"available", "error"})["status"] == \
        "available"
    assert _sha(volume_file(second.settings, restored)) == \
        _sha(volume_file(first.settings, vol))
