"""Backups written before the data path became a package still restore, verify and delete.

tests/datapath/data/format-v1 was written by the code at commit 390cbe3
(workers/drivers/chunked.py) with make_format_v1_fixture.py: a chain of a full
backup and three incrementals (zstd, zstd, zlib, none; 4 KiB blocks, several
packs, zeroed runs, a partial last block) and a full backup at the default
settings. expected.json holds the SHA-256 of the volume at each backup.
"""
import hashlib
import json
import shutil
from pathlib import Path

import format_v1_images as images
import pytest
from dp_helpers import KiB
from dp_helpers import garbage_target
from dp_helpers import read_file
from dp_helpers import sparse_target

from workers.datapath import BackupRef
from workers.datapath import ChunkedDriver
from workers.datapath import IntegrityError
from workers.stores import make_store

FIXTURE = Path(__file__).parent / "data" / "format-v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
BACKUPS = {b["backup_id"]: b for b in EXPECTED["backups"]}
SIZE = EXPECTED["size_bytes"]


def _ref(backup_id):
    return BackupRef(*BACKUPS[backup_id]["ref"])


def _chain_ids(backup_id):
    """The ids of the chain of ``backup_id``, newest first."""
    ids = [backup_id]
    while BACKUPS[ids[-1]]["parent"] is not None:
        parent = BackupRef(*BACKUPS[ids[-1]]["parent"])
        ids.append(next(i for i, b in BACKUPS.items() if _ref(i) == parent))
    return ids


@pytest.fixture(params=["posix", "memory"])
def v1_store(request, tmp_path):
    """A copy of the fixture store (the tests delete from it)."""
    if request.param == "posix":
        shutil.copytree(FIXTURE / "store", tmp_path / "store")
        return make_store("posix", path=str(tmp_path / "store"))
    store = make_store("memory")
    root = FIXTURE / "store"
    for path in sorted(root.rglob("*")):
        if path.is_file():
            store.put(path.relative_to(root).as_posix(), path.read_bytes())
    return store


def test_fixture_is_what_the_old_code_wrote():
    assert BACKUPS.keys() == {"v1full", "v1inc1", "v1inc2", "v1inc3", "v1dflt"}
    assert images.SIZE == SIZE
    total = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert total < 512 * KiB


@pytest.mark.parametrize("backup_id", sorted(BACKUPS))
def test_v1_backup_restores_byte_identical(v1_store, tmp_path, backup_id):
    drv = ChunkedDriver(v1_store)          # reading follows the manifest, not the settings
    want = BACKUPS[backup_id]["sha256"]
    onto_zeros = sparse_target(str(tmp_path / "zeros"), SIZE)
    result = drv.restore(_ref(backup_id), onto_zeros, target_is_zeroed=True)
    assert hashlib.sha256(read_file(onto_zeros)).hexdigest() == want
    assert result.chain == [_ref(i) for i in _chain_ids(backup_id)]
    onto_junk = garbage_target(str(tmp_path / "junk"), SIZE + 8 * KiB)
    tail = read_file(onto_junk)[SIZE:]
    drv.restore(_ref(backup_id), onto_junk)
    got = read_file(onto_junk)
    assert hashlib.sha256(got[:SIZE]).hexdigest() == want
    assert got[SIZE:] == tail


@pytest.mark.parametrize("backup_id", sorted(BACKUPS))
def test_v1_backup_verifies(v1_store, backup_id):
    result = ChunkedDriver(v1_store).verify(_ref(backup_id))
    assert result.ok, result.problems
    chain = _chain_ids(backup_id)
    assert result.chain == [_ref(i) for i in chain]
    packs = [n for i in chain for n in v1_store.list(f"{_ref(i).container}/")
             if "/data-" in n]
    assert result.objects_checked == len(packs)
    assert ChunkedDriver(v1_store).read_manifest(_ref(backup_id))["backup_id"] == backup_id


def test_v1_backups_delete(v1_store, tmp_path):
    drv = ChunkedDriver(v1_store)
    drv.delete(_ref("v1inc3"))                   # the newest: the rest of its chain stays
    assert not v1_store.list(f"{_ref('v1inc3').container}/")
    target = sparse_target(str(tmp_path / "t"), SIZE)
    drv.restore(_ref("v1inc2"), target)
    assert hashlib.sha256(read_file(target)).hexdigest() == BACKUPS["v1inc2"]["sha256"]
    assert drv.verify(_ref("v1inc2")).ok
    drv.delete(_ref("v1full"))                   # a parent: its children cannot restore
    with pytest.raises(IntegrityError, match="missing"):
        drv.restore(_ref("v1inc1"), target)
    assert not drv.verify(_ref("v1inc2")).ok
    assert drv.verify(_ref("v1dflt")).ok         # another chain is untouched
    for backup_id in BACKUPS:
        drv.delete(_ref(backup_id))
        drv.delete(_ref(backup_id))              # idempotent
    assert v1_store.list("") == []


def test_current_code_writes_version_2_of_the_same_volumes(v1_store, tmp_path):
    """Same images, same settings: version-2 backups that restore to the same bytes; an
    incremental asked for on a version-1 parent is a full backup that says why."""
    image = str(tmp_path / "volume.img")
    written = {}
    for entry in EXPECTED["backups"]:
        images.build_image(image, entry["stage"])
        drv = ChunkedDriver(v1_store, compression=entry["compression"], **entry["options"])
        parent = None
        if entry["parent"]:
            parent_id = next(i for i, b in BACKUPS.items() if b["ref"] == entry["parent"])
            parent = written.get(parent_id, _ref(parent_id))
        result = drv.backup(image, backup_id=entry["backup_id"] + "v2",
                            volume_id="fixture-volume", size_bytes=SIZE, parent=parent)
        written[entry["backup_id"]] = result.ref
        assert result.manifest["version"] == 2
        if entry["parent"] and entry["compression"] == EXPECTED["backups"][
                [b["backup_id"] for b in EXPECTED["backups"]].index(parent_id)]["compression"]:
            assert result.incremental, result.message
        target = sparse_target(str(tmp_path / "t"), SIZE)
        drv.restore(result.ref, target)
        assert hashlib.sha256(read_file(target)).hexdigest() == entry["sha256"]
        assert drv.verify(result.ref).ok
    images.build_image(image, 1)
    on_v1 = ChunkedDriver(v1_store, **BACKUPS["v1full"]["options"]).backup(
        image, backup_id="onv1", volume_id="fixture-volume", size_bytes=SIZE,
        parent=_ref("v1full"))
    assert not on_v1.incremental and "format version 1" in on_v1.message
    assert on_v1.manifest["parent"] is None and on_v1.manifest["chain_depth"] == 0


def test_v1_referenced_objects_are_its_own(v1_store):
    drv = ChunkedDriver(v1_store)
    for backup_id in BACKUPS:
        ref = _ref(backup_id)
        found = drv.referenced_objects(ref)
        assert found.format_version == 1
        prefix = f"{ref.container}/{ref.prefix}/"
        assert sorted(o.name for o in found.objects) == v1_store.list(prefix)
        for obj in found.objects:
            data = v1_store.get(obj.name)
            assert (len(data), hashlib.sha256(data).hexdigest()) == (obj.size, obj.sha256)
