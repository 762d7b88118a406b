"""Backup/restore correctness: property-based chains on both stores, plus the
format, fallback and sparse behaviours."""
import hashlib
import itertools
import os
import random
import tempfile
import threading

import pytest
from dp_helpers import KiB
from dp_helpers import MiB
from dp_helpers import garbage_target
from dp_helpers import read_file
from dp_helpers import small_driver
from dp_helpers import sparse_target
from dp_helpers import write_volume
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from workers.datapath import FORMAT
from workers.datapath import FORMAT_VERSION
from workers.datapath import ChunkedDriver
from workers.datapath import InvalidBackup
from workers.datapath import InvalidContainer
from workers.datapath import decode_manifest
from workers.datapath import encode_manifest

# ---------------------------------------------------------------- property test

SIZES = [64 * KiB, 100 * KiB + 123, 96 * KiB]

op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 10 ** 9), st.integers(1, 40 * KiB),
              st.sampled_from(["random", "zeros", "text"])),
    st.tuples(st.just("punch"), st.integers(0, 10 ** 9), st.integers(1, 40 * KiB)),
    st.tuples(st.just("full")),
    st.tuples(st.just("incr"), st.integers(0, 50)),   # parent index (mod #backups)
)


def _punch(path, off, length):
    from workers.datapath.volume_io import zero_range
    fd = os.open(path, os.O_RDWR)
    try:
        zero_range(fd, off, length)
    finally:
        os.close(fd)


def _run_chain(store, size, ops, seed, compression):
    rng = random.Random(seed)
    drv = small_driver(store, compression=compression, max_chain_depth=3)
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        vol = os.path.join(d, "vol")
        sparse_target(vol, size)
        backups = []          # (ref, bytes of the volume at that backup, depth)
        for i, o in enumerate([*ops, ("incr", 10 ** 6)]):
            if o[0] == "write":
                off = o[1] % size
                ln = min(o[2], size - off)
                if o[3] == "random":
                    data = rng.randbytes(ln)
                elif o[3] == "zeros":
                    data = bytes(ln)
                else:
                    data = (b"volume backup %d " % i * ln)[:ln]
                with open(vol, "r+b") as f:
                    f.seek(off)
                    f.write(data)
            elif o[0] == "punch":
                off = o[1] % size
                _punch(vol, off, min(o[2], size - off))
            else:
                parent = None
                pdepth = -1
                if o[0] == "incr" and backups:
                    parent, _b, pdepth = backups[o[1] % len(backups)]
                res = drv.backup(vol, backup_id=f"b{i:04d}", volume_id="vol-1", size_bytes=size,
                                 container=f"c/{store_tag(store)}", parent=parent)
                if parent is None:
                    assert not res.incremental and res.message is None
                    depth = 0
                elif pdepth + 1 > 3:
                    assert not res.incremental and "max_chain_depth" in res.message
                    depth = 0
                else:
                    assert res.incremental and res.message is None
                    depth = pdepth + 1
                assert res.manifest["chain_depth"] == depth
                backups.append((res.ref, read_file(vol), depth))
        # every backup restores to exactly the bytes the volume had at that time
        for ref, expected, _depth in backups:
            t1 = sparse_target(os.path.join(d, "t1"), size)
            drv.restore(ref, t1, target_is_zeroed=True)
            assert read_file(t1) == expected
            t2 = garbage_target(os.path.join(d, "t2"), size + 8 * KiB, seed=len(expected))
            tail = read_file(t2)[size:]
            drv.restore(ref, t2, target_is_zeroed=False)
            got = read_file(t2)
            assert got[:size] == expected
            assert got[size:] == tail        # nothing written past the volume
        # a full backup keeps restoring after its children are deleted, and the
        # children's deletion removes only their own objects
        for ref, _expected, _depth in backups:
            assert drv.verify(ref).ok


def store_tag(store):
    return store.kind


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(size=st.sampled_from(SIZES), ops=st.lists(op, min_size=1, max_size=12),
       seed=st.integers(0, 2 ** 32), compression=st.sampled_from(["zstd", "zlib", "none"]))
def _property(store_factory, size, ops, seed, compression):
    _run_chain(store_factory(), size, ops, seed, compression)


def test_any_chain_restores_exactly(store_factory):
    _property(store_factory)


# ---------------------------------------------------------------- focused tests

def _vol(tmp_path, size, extents, seed=1):
    return write_volume(str(tmp_path / "vol"), size, extents, seed)


def test_later_zeroing_and_holes_win(store, tmp_path):
    size = 256 * KiB
    vol = _vol(tmp_path, size, [(0, 200 * KiB)])
    drv = small_driver(store)
    full = drv.backup(vol, backup_id="full1", volume_id="v", size_bytes=size)
    v1 = read_file(vol)
    with open(vol, "r+b") as f:            # explicit zeros over data
        f.seek(8 * KiB)
        f.write(bytes(20 * KiB))
    _punch(vol, 64 * KiB, 64 * KiB)        # a hole over data
    inc = drv.backup(vol, backup_id="inc1", volume_id="v", size_bytes=size, parent=full.ref)
    v2 = read_file(vol)
    assert inc.incremental
    assert inc.changed_bytes == 0 and inc.new_objects == inc.referenced_objects[-1:]
    assert {o.name for o in inc.referenced_objects} < \
        {o.name for o in full.referenced_objects} | {inc.new_objects[0].name}
    for ref, want in ((full.ref, v1), (inc.ref, v2)):
        t = garbage_target(str(tmp_path / "t"), size)
        drv.restore(ref, t)
        assert read_file(t) == want


def test_fallback_to_full_on_growth_and_block_size(posix_store, tmp_path):
    vol = _vol(tmp_path, 128 * KiB, [(0, 128 * KiB)])
    drv = small_driver(posix_store)
    full = drv.backup(vol, backup_id="f1", volume_id="v", size_bytes=128 * KiB)
    with open(vol, "r+b") as f:
        f.truncate(192 * KiB)
    grown = drv.backup(vol, backup_id="g1", volume_id="v", size_bytes=192 * KiB, parent=full.ref)
    assert not grown.incremental and "size changed" in grown.message
    assert grown.manifest["parent"] is None
    other = small_driver(posix_store, block_size=8 * KiB)
    bs = other.backup(vol, backup_id="bs1", volume_id="v", size_bytes=192 * KiB, parent=grown.ref)
    assert not bs.incremental and "block size" in bs.message
    other_vol = drv.backup(vol, backup_id="ov1", volume_id="w", size_bytes=192 * KiB,
                           parent=grown.ref)
    assert not other_vol.incremental and "volume" in other_vol.message
    t = sparse_target(str(tmp_path / "t"), 192 * KiB)
    other.restore(bs.ref, t)            # driver settings do not matter for reading
    assert read_file(t) == read_file(vol)


def test_incremental_stores_only_changed_blocks(posix_store, tmp_path):
    size = 4 * MiB
    vol = _vol(tmp_path, size, [(0, size)])
    drv = ChunkedDriver(posix_store, block_size=16 * KiB)
    full = drv.backup(vol, backup_id="f", volume_id="v", size_bytes=size)
    with open(vol, "r+b") as f:
        for off in (0, 1 * MiB + 5, 3 * MiB):
            f.seek(off)
            f.write(b"\xff" * 100)
    inc = drv.backup(vol, backup_id="i", volume_id="v", size_bytes=size, parent=full.ref)
    assert inc.incremental and inc.changed_bytes == 3 * 16 * KiB
    assert inc.stored_bytes < 64 * KiB
    assert inc.data_bytes == size                # everything was read and digested
    same = drv.backup(vol, backup_id="s", volume_id="v", size_bytes=size, parent=inc.ref)
    assert same.changed_bytes == 0 and same.object_count == 2     # an index object, the root
    assert [o.name for o in same.new_objects] == [f"{same.container}/{same.prefix}/index-00000000"]


def test_holes_are_not_read_and_zero_blocks_cost_nothing(posix_store, tmp_path):
    size = 8 * 1024 * MiB            # 8 GiB sparse, 2 small extents
    vol = _vol(tmp_path, size, [(5 * 1024 * MiB, 64 * KiB), (7 * 1024 * MiB, 32 * KiB)])
    with open(vol, "r+b") as f:      # 1 MiB of explicit zeros: read but not stored
        f.seek(1024 * MiB)
        f.write(bytes(MiB))
    drv = ChunkedDriver(posix_store)
    res = drv.backup(vol, backup_id="sp", volume_id="v", size_bytes=size)
    assert res.data_bytes == 64 * KiB + 32 * KiB + MiB
    assert res.changed_bytes == 96 * KiB
    assert res.manifest["stats"]["pack_bytes"] < 100 * KiB
    t = sparse_target(str(tmp_path / "t"), size)
    rr = drv.restore(res.ref, t, target_is_zeroed=True)
    assert rr.bytes_written == 96 * KiB
    with open(t, "rb") as f, open(vol, "rb") as g:
        for off in (5 * 1024 * MiB, 7 * 1024 * MiB, 1024 * MiB):
            f.seek(off)
            g.seek(off)
            assert f.read(MiB) == g.read(MiB)
    assert os.stat(t).st_blocks * 512 < 4 * MiB    # holes stayed holes


def test_manifest_is_self_describing(store, tmp_path):
    vol = _vol(tmp_path, 64 * KiB, [(0, 20 * KiB)])
    drv = small_driver(store)
    full = drv.backup(vol, backup_id="m1", volume_id="vol-9", size_bytes=64 * KiB,
                      volume_meta={"name": "db", "bootable": True})
    inc = drv.backup(vol, backup_id="m2", volume_id="vol-9", size_bytes=64 * KiB, parent=full.ref)
    assert full.container == "m1" and full.prefix == "backup_m1"
    m = drv.read_manifest(inc.ref)
    assert m["format"] == FORMAT and m["version"] == FORMAT_VERSION
    assert m["parent"] == {"container": "m1", "prefix": "backup_m1", "backup_id": "m1"}
    assert m["block_size"] == 4 * KiB and m["compression"] == "zstd" and m["digest"] == "sha256"
    assert drv.read_manifest(full.ref)["volume_meta"] == {"name": "db", "bootable": True}
    # a fresh driver with other settings reads every backup from the store alone
    fresh = ChunkedDriver(store, block_size=64 * KiB, compression="zlib")
    assert fresh.read_manifest(full.ref)["backup_id"] == "m1"
    assert fresh.read_manifest(inc.ref)["parent"]["backup_id"] == "m1"
    assert fresh.verify(inc.ref).ok


def test_default_container_sharded_and_validation(posix_store, tmp_path):
    vol = _vol(tmp_path, 32 * KiB, [(0, 4 * KiB)])
    drv = small_driver(posix_store)
    res = drv.backup(vol, backup_id="1234abcd", volume_id="v", size_bytes=32 * KiB)
    assert (res.container, res.prefix) == ("12/34/1234abcd", "backup_1234abcd")
    assert all(n.startswith("12/34/1234abcd/backup_1234abcd/") for n in posix_store.list(""))
    for bad in ("../x", "/abs", "a b"):
        with pytest.raises(InvalidContainer):
            drv.backup(vol, backup_id="zz99", volume_id="v", size_bytes=32 * KiB, container=bad)
    with pytest.raises(InvalidContainer):
        drv.backup(vol, backup_id="../evil", volume_id="v", size_bytes=32 * KiB)
    assert posix_store.list("") == posix_store.list("12/")


def test_delete_removes_only_that_backup(store, tmp_path):
    vol = _vol(tmp_path, 64 * KiB, [(0, 64 * KiB)])
    drv = small_driver(store)
    full = drv.backup(vol, backup_id="d1", volume_id="v", size_bytes=64 * KiB, container="cc")
    before = set(store.list(""))
    with open(vol, "r+b") as f:
        f.write(b"changed")
    inc = drv.backup(vol, backup_id="d2", volume_id="v", size_bytes=64 * KiB, container="cc",
                     parent=full.ref)
    assert set(store.list("")) > before
    drv.delete(inc.ref)
    assert set(store.list("")) == before
    drv.delete(inc.ref)                # idempotent
    t = sparse_target(str(tmp_path / "t"), 64 * KiB)
    drv.restore(full.ref, t)
    assert drv.verify(full.ref).ok


def test_unknown_version_and_deep_chain_rejected(posix_store, tmp_path):
    vol = _vol(tmp_path, 32 * KiB, [(0, 8 * KiB)])
    drv = small_driver(posix_store)
    full = drv.backup(vol, backup_id="v1", volume_id="v", size_bytes=32 * KiB)
    name = f"{full.container}/{full.prefix}/manifest.json"
    body = decode_manifest(posix_store.get(name))
    body["version"] = 99
    posix_store.put(name, encode_manifest(body))
    with pytest.raises(InvalidBackup, match="version"):
        drv.restore(full.ref, str(tmp_path / "t"))
    assert not drv.verify(full.ref).ok
    # an incremental against an unusable parent falls back to a full backup
    res = drv.backup(vol, backup_id="v2", volume_id="v", size_bytes=32 * KiB, parent=full.ref)
    assert not res.incremental and "parent" in res.message
    # version 2: the parent link is informational, a restore never follows it (not even
    # a link that loops back to the backup itself)
    body = decode_manifest(posix_store.get(f"{res.container}/{res.prefix}/manifest.json"))
    body.update(parent={"container": res.container, "prefix": res.prefix, "backup_id": "v2"},
                chain_depth=1)
    posix_store.put(f"{res.container}/{res.prefix}/manifest.json", encode_manifest(body))
    drv.restore(res.ref, str(tmp_path / "t"))
    assert read_file(str(tmp_path / "t")) == read_file(vol)


def test_progress_from_calling_thread(store, tmp_path):
    size = 2 * MiB
    vol = _vol(tmp_path, size, [(0, MiB), (1536 * KiB, 256 * KiB)])
    drv = small_driver(store, segment_size=64 * KiB, pack_size=128 * KiB,
                       max_inflight_bytes=256 * KiB, check_interval_bytes=256 * KiB)
    me = threading.get_ident()
    calls, checks = [], []

    def progress(done, total):
        assert threading.get_ident() == me
        calls.append((done, total))

    def cancelled():
        assert threading.get_ident() == me
        checks.append(1)
        return False

    res = drv.backup(vol, backup_id="p1", volume_id="v", size_bytes=size,
                     progress=progress, cancelled=cancelled)
    assert calls[-1] == (size, size) and calls[0] == (0, size)
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(calls))
    assert len(checks) >= (MiB + 256 * KiB) // (256 * KiB)   # data read, holes skipped
    calls.clear()
    checks.clear()
    t = sparse_target(str(tmp_path / "t"), size)
    drv.restore(res.ref, t, progress=progress, cancelled=cancelled)
    assert calls[-1] == (size, size)
    assert read_file(t) == read_file(vol)
    assert checks


def test_sha256_of_digests_is_cryptographic(posix_store, tmp_path):
    vol = _vol(tmp_path, 16 * KiB, [(0, 16 * KiB)])
    drv = small_driver(posix_store)
    res = drv.backup(vol, backup_id="h1", volume_id="v", size_bytes=16 * KiB)
    import base64
    index = decode_manifest(posix_store.get(
        f"{res.container}/{res.prefix}/{res.manifest['index'][0]['name']}"))
    digs = base64.b64decode(index["extents"][0][7])
    data = read_file(vol)
    assert digs[:32] == hashlib.sha256(data[:4 * KiB]).digest()


def test_existing_backup_never_overwritten_and_leftovers_cleaned(store, tmp_path):
    from workers.datapath import InvalidBackup
    vol = _vol(tmp_path, 64 * KiB, [(0, 64 * KiB)])
    drv = small_driver(store)
    res = drv.backup(vol, backup_id="dup1", volume_id="v", size_bytes=64 * KiB, container="cc")
    objs = store.list("")
    with pytest.raises(InvalidBackup, match="already exists"):
        drv.backup(vol, backup_id="dup1", volume_id="v", size_bytes=64 * KiB, container="cc")
    assert store.list("") == objs
    # leftovers of an interrupted attempt (no manifest) are replaced by a retry
    store.put("cc/backup_dup2/data-00000007", b"stale")
    r2 = drv.backup(vol, backup_id="dup2", volume_id="v", size_bytes=64 * KiB, container="cc")
    assert "cc/backup_dup2/data-00000007" not in store.list("")
    assert drv.verify(r2.ref).ok and drv.verify(res.ref).ok


def test_unserializable_volume_meta_leaves_nothing(posix_store, tmp_path):
    vol = _vol(tmp_path, 64 * KiB, [(0, 64 * KiB)])
    drv = small_driver(posix_store)
    with pytest.raises(TypeError):
        drv.backup(vol, backup_id="vm1", volume_id="v", size_bytes=64 * KiB,
                   volume_meta={"bad": object()})
    assert posix_store.list("") == []
