"""Corruption and cancellation on both stores."""
import os

import pytest
from dp_helpers import KiB
from dp_helpers import MiB
from dp_helpers import read_file
from dp_helpers import small_driver
from dp_helpers import sparse_target
from dp_helpers import write_volume

from workers.datapath import BackupCancelled
from workers.datapath import IntegrityError

SIZE = 256 * KiB


def _chain(store, tmp_path):
    """A full backup and an incremental on top; every parent pack stays live."""
    vol = write_volume(str(tmp_path / "vol"), SIZE, [(0, 160 * KiB), (200 * KiB, 40 * KiB)])
    drv = small_driver(store, segment_size=32 * KiB, pack_size=48 * KiB)
    full = drv.backup(vol, backup_id="full", volume_id="v", size_bytes=SIZE, container="k")
    with open(vol, "r+b") as f:
        f.seek(100 * KiB)
        f.write(os.urandom(4 * KiB))
        f.seek(230 * KiB)
        f.write(os.urandom(12 * KiB))
    inc = drv.backup(vol, backup_id="inc", volume_id="v", size_bytes=SIZE, container="k",
                     parent=full.ref)
    assert inc.incremental and len(store.list("k/backup_full/")) >= 4
    return drv, vol, full, inc


def _damage(store, name, how, pos):
    if how == "remove":
        store.delete(name)
        return
    data = store.get(name)
    if how == "truncate":
        store.put(name, data[: len(data) * pos // 4])
    else:
        i = min(len(data) - 1, len(data) * pos // 4)
        b = bytearray(data)
        b[i] ^= 0x01
        store.put(name, bytes(b))


def _uses(drv, ref):
    """Every object a restore of ``ref`` reads: what it references, and its root."""
    names = {o.name for o in drv.referenced_objects(ref).objects}
    return names | {f"{ref.container}/{ref.prefix}/manifest.json"}


@pytest.mark.parametrize("how,pos", [("flip", 0), ("flip", 2), ("flip", 4), ("truncate", 0),
                                     ("truncate", 3), ("remove", 0)])
def test_any_damaged_object_is_detected(store, tmp_path, how, pos):
    """Damage is never restored silently: a backup whose blocks it touches fails its
    restore and its verify, naming the object. A shared pack damaged only in blocks
    a backup does not use (the incremental rewrote them) still restores that backup
    byte-identical; damage to an object a backup does not use at all (another
    backup's root or index) changes nothing for it."""
    drv, vol, full, inc = _chain(store, tmp_path)
    contents = {full.ref: None, inc.ref: read_file(vol)}
    target = sparse_target(str(tmp_path / "t"), SIZE)
    drv.restore(full.ref, target)
    contents[full.ref] = read_file(target)
    names = store.list("k/")
    uses = {full.ref: _uses(drv, full.ref), inc.ref: _uses(drv, inc.ref)}
    assert any("backup_full/data-" in n for n in uses[inc.ref])     # blocks are shared
    assert any(n.endswith("manifest.json") for n in names)
    assert set(names) == uses[full.ref] | uses[inc.ref]
    for name in names:
        original = store.get(name)
        _damage(store, name, how, pos)
        detected = []
        for ref in (full.ref, inc.ref):
            target = sparse_target(str(tmp_path / "t"), SIZE)
            res = drv.verify(ref)
            if name not in uses[ref]:
                drv.restore(ref, target)
                assert res.ok, (name, res.problems)
                assert read_file(target) == contents[ref]
                continue
            try:
                drv.restore(ref, target)
            except IntegrityError as e:
                assert name in str(e)
                assert not res.ok and any(name in p for p in res.problems), \
                    (name, res.problems)
                detected.append(ref)
                continue
            # Only a pack shared with another backup can be damaged where this one
            # does not look; then the restore is exact and verify agrees.
            assert "/data-" in name and how == "flip", name
            assert read_file(target) == contents[ref], name
            assert res.ok, (name, res.problems)
        assert detected, f"damage to {name} went unnoticed by every backup using it"
        store.put(name, original)        # repair, then everything is fine again
    target = sparse_target(str(tmp_path / "t"), SIZE)
    drv.restore(inc.ref, target)
    assert read_file(target) == contents[inc.ref]
    ok = drv.verify(inc.ref)
    assert ok.ok and ok.objects_checked == len([n for n in uses[inc.ref] if "data-" in n])


def test_digest_mismatch_with_no_compression_is_caught(posix_store, tmp_path):
    """With compression "none" a flipped data byte only shows in the digests."""
    vol = write_volume(str(tmp_path / "vol"), 64 * KiB, [(0, 64 * KiB)])
    drv = small_driver(posix_store, compression="none")
    res = drv.backup(vol, backup_id="n1", volume_id="v", size_bytes=64 * KiB)
    name = next(n for n in posix_store.list("") if "data-" in n)
    data = bytearray(posix_store.get(name))
    data[100] ^= 0xFF
    posix_store.put(name, bytes(data))
    with pytest.raises(IntegrityError):
        drv.restore(res.ref, sparse_target(str(tmp_path / "t"), 64 * KiB))
    assert not drv.verify(res.ref).ok


def _counting_cancel(n):
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] >= n
    return cancelled, calls


@pytest.mark.parametrize("kind", ["full", "incremental"])
def test_cancel_at_every_point_leaves_no_objects(store, tmp_path, kind):
    size = 2 * MiB
    vol = write_volume(str(tmp_path / "vol"), size, [(0, 1536 * KiB)])
    drv = small_driver(store, segment_size=64 * KiB, pack_size=96 * KiB,
                       max_inflight_bytes=256 * KiB, check_interval_bytes=1)
    parent = None
    if kind == "incremental":
        parent = drv.backup(vol, backup_id="par", volume_id="v", size_bytes=size,
                            container="cx").ref
        with open(vol, "r+b") as f:
            for off in range(0, 1536 * KiB, 128 * KiB):
                f.seek(off)
                f.write(os.urandom(KiB))
    before = store.list("")
    n = 1
    while True:
        cancelled, calls = _counting_cancel(n)
        try:
            res = drv.backup(vol, backup_id="bk", volume_id="v", size_bytes=size,
                             container="cx", parent=parent, cancelled=cancelled)
        except BackupCancelled:
            assert store.list("") == before, f"objects left after cancel at call {n}"
            n += 1
            continue
        assert calls["n"] < n          # it only finished because we never said cancel
        assert res.incremental == (kind == "incremental")
        break
    assert n > 5                        # it was cancelled at many different points
    t = sparse_target(str(tmp_path / "t"), size)
    drv.restore(res.ref, t)
    assert read_file(t) == read_file(vol)
    if parent is not None:
        assert drv.verify(parent).ok


def test_cancelled_restore_and_verify_raise(store, tmp_path):
    size = 2 * MiB
    vol = write_volume(str(tmp_path / "vol"), size, [(0, 2 * MiB)])
    drv = small_driver(store, segment_size=64 * KiB, pack_size=64 * KiB,
                       max_inflight_bytes=256 * KiB, check_interval_bytes=1)
    res = drv.backup(vol, backup_id="rc", volume_id="v", size_bytes=size)
    for n in (1, 3, 6):
        cancelled, calls = _counting_cancel(n)
        progress = []
        with pytest.raises(BackupCancelled):
            drv.restore(res.ref, sparse_target(str(tmp_path / "t"), size), cancelled=cancelled,
                        progress=lambda done, _total, seen=progress: seen.append(done))
        assert calls["n"] == n
        assert not progress or progress[-1] < size     # stopped before the end
        cancelled, calls = _counting_cancel(n)
        with pytest.raises(BackupCancelled):
            drv.verify(res.ref, cancelled=cancelled)
    # the backup itself is untouched by a cancelled restore
    assert drv.verify(res.ref).ok


def test_a_delete_removes_exactly_its_own_objects(store, tmp_path):
    """Containers are the tenants' choice: one may be named '<another's container>/
    backup_<its id>', so its objects lie below the other backup's prefix. Deleting the
    outer backup must leave them."""
    import hashlib

    from dp_helpers import MiB
    from dp_helpers import small_driver
    from dp_helpers import write_volume

    from workers.datapath import BackupRef
    drv = small_driver(store)
    outer_image = write_volume(str(tmp_path / "outer.img"), 1 * MiB, [(0, 200_000)], seed=1)
    inner_image = write_volume(str(tmp_path / "inner.img"), 1 * MiB, [(4096, 300_000)], seed=2)
    outer = drv.backup(outer_image, backup_id="outer1", volume_id="v1", size_bytes=1 * MiB,
                       container="tenant-a")
    inner = drv.backup(inner_image, backup_id="inner1", volume_id="v2", size_bytes=1 * MiB,
                       container="tenant-a/backup_outer1")
    inner_names = store.list(f"{inner.container}/{inner.prefix}/")
    assert inner_names and all(n.startswith("tenant-a/backup_outer1/") for n in inner_names)
    drv.delete(BackupRef(outer.container, outer.prefix))
    assert store.list(f"{inner.container}/{inner.prefix}/") == inner_names
    target = str(tmp_path / "restored.img")
    drv.restore(BackupRef(inner.container, inner.prefix), target)
    with open(target, "rb") as a, open(inner_image, "rb") as b:
        assert hashlib.sha256(a.read()).digest() == hashlib.sha256(b.read()).digest()
    assert not [n for n in store.list("tenant-a/backup_outer1/") if n.count("/") == 2]


def test_the_block_digests_are_checked_not_only_the_objects(store, tmp_path):
    """A pack swapped for another backup's, with the manifest's object digests made to
    match: only the per-block digests can tell, and the restore and verify must fail."""
    import hashlib
    import json

    from workers.datapath import BackupRef
    from workers.datapath import decode_manifest
    from workers.datapath import encode_manifest
    drv = small_driver(store, compression="none")
    same_layout = [(0, 64 * KiB)]
    first = drv.backup(write_volume(str(tmp_path / "a"), SIZE, same_layout, seed=1),
                       backup_id="aaa", volume_id="v", size_bytes=SIZE, container="k")
    second = drv.backup(write_volume(str(tmp_path / "b"), SIZE, same_layout, seed=2),
                        backup_id="bbb", volume_id="v", size_bytes=SIZE, container="k")
    # a's index object made to list b's packs (with their true sizes and digests), and
    # a's root made to vouch for that index object: only the block digests can tell.
    root_a_name = "k/backup_aaa/manifest.json"
    root_a = decode_manifest(store.get(root_a_name))
    index_b = decode_manifest(store.get(
        "k/backup_bbb/" + decode_manifest(store.get("k/backup_bbb/manifest.json"))
        ["index"][0]["name"]))
    index_a_name = "k/backup_aaa/" + root_a["index"][0]["name"]
    index_a = decode_manifest(store.get(index_a_name))
    assert [o["size"] for o in index_a["objects"]] == [o["size"] for o in index_b["objects"]]
    assert [e[:7] for e in index_a["extents"]] == [e[:7] for e in index_b["extents"]]
    index_a["objects"] = json.loads(json.dumps(index_b["objects"]))
    raw = encode_manifest(index_a)
    store.put(index_a_name, raw)
    root_a["index"][0].update(size=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    store.put(root_a_name, encode_manifest(root_a))
    with pytest.raises(IntegrityError, match="does not match its digest"):
        drv.restore(BackupRef(first.container, first.prefix),
                    sparse_target(str(tmp_path / "target"), SIZE))
    assert not drv.verify(BackupRef(first.container, first.prefix)).ok
    assert drv.verify(BackupRef(second.container, second.prefix)).ok
