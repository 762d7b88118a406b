"""Format version 2: chains of logical fulls over shared packs, any backup deletable."""
import hashlib
import itertools
import os

import pytest
from dp_helpers import KiB
from dp_helpers import garbage_target
from dp_helpers import read_file
from dp_helpers import small_driver
from dp_helpers import sparse_target
from dp_helpers import write_volume

from workers.datapath import IntegrityError
from workers.datapath import InvalidBackup
from workers.datapath import decode_manifest
from workers.datapath import encode_manifest
from workers.datapath.index import check_index

SIZE = 256 * KiB + 1000          # the last 4 KiB block is partial


def _punch(path, off, length):
    from workers.datapath.volume_io import zero_range
    fd = os.open(path, os.O_RDWR)
    try:
        zero_range(fd, off, length)
    finally:
        os.close(fd)


def _write(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def _index_objects(store, result):
    """The decoded index objects of a backup, in volume order."""
    root = decode_manifest(store.get(f"{result.container}/{result.prefix}/manifest.json"))
    return [decode_manifest(store.get(f"{result.container}/{result.prefix}/{e['name']}"))
            for e in root["index"]]


def _chain(store, tmp_path, **driver_options):
    """A full backup and four incrementals, each stage changing the volume another way;
    returns the driver, the volume and [(result, bytes of the volume at that backup)]."""
    vol = write_volume(str(tmp_path / "vol"), SIZE,
                       [(0, 100 * KiB), (128 * KiB, 96 * KiB), (SIZE - 700, 700)], seed=3)
    options = dict(segment_size=32 * KiB, pack_size=40 * KiB, index_span=64 * KiB)
    options.update(driver_options)
    drv = small_driver(store, **options)
    stages = [
        lambda: None,
        lambda: _write(vol, 9 * KiB + 17, b"\x01" * 100),        # inside a parent frame
        lambda: (_write(vol, 20 * KiB, bytes(8 * KiB)),          # data made zero, a hole
                 _punch(vol, 136 * KiB, 16 * KiB)),
        lambda: _write(vol, SIZE - 10, b"\xee" * 10),            # the partial last block
        lambda: (_write(vol, 240 * KiB, os.urandom(8 * KiB)),    # new data in a hole, and
                 _write(vol, 9 * KiB + 17, b"\x02" * 100)),      # a block changed twice
    ]
    chain = []
    for number, stage in enumerate(stages):
        stage()
        parent = chain[-1][0].ref if chain else None
        result = drv.backup(vol, backup_id=f"c{number}", volume_id="vol", size_bytes=SIZE,
                            container=f"k{number % 2}", parent=parent)
        assert result.incremental == (parent is not None), result.message
        assert result.manifest["chain_depth"] == number
        chain.append((result, read_file(vol)))
    return drv, vol, chain


def _restores(drv, tmp_path, result, expected):
    target = garbage_target(str(tmp_path / "t"), SIZE)
    drv.restore(result.ref, target)
    assert read_file(target) == expected
    zeros = sparse_target(str(tmp_path / "z"), SIZE)
    drv.restore(result.ref, zeros, target_is_zeroed=True)
    assert read_file(zeros) == expected
    verified = drv.verify(result.ref)
    assert verified.ok, verified.problems


def test_chain_restores_and_shares_blocks(store, tmp_path):
    drv, _vol, chain = _chain(store, tmp_path)
    for result, expected in chain:
        _restores(drv, tmp_path, result, expected)
        stored = drv.referenced_objects(result.ref)
        assert stored.format_version == 2
        assert set(stored.objects) == set(result.referenced_objects)
        assert set(result.new_objects) <= set(result.referenced_objects)
        assert not any(o.name.endswith("manifest.json") for o in result.referenced_objects)
    full, inc1 = chain[0][0], chain[1][0]
    # the one changed block cost one new 4 KiB frame; the rest points into the full's packs
    assert inc1.changed_bytes == 4 * KiB
    new_packs = [o for o in inc1.new_objects if "/data-" in o.name]
    assert len(new_packs) == 1
    assert {o for o in inc1.referenced_objects if "/data-" in o.name} - set(new_packs) <= \
        set(full.referenced_objects)
    extents = [e for index in _index_objects(store, inc1) for e in index["extents"]]
    split = [e for e in extents if e[4] > e[6]]       # a sub-range of a bigger frame
    assert split, "the changed block's parent frame is referenced around it"
    assert [e[5] for e in extents] == sorted(e[5] for e in extents)


def test_each_incremental_references_only_its_parents_objects_and_its_own(store, tmp_path):
    _drv, _vol, chain = _chain(store, tmp_path)
    for (parent, _p), (child, _c) in itertools.pairwise(chain):
        allowed = {o.name for o in parent.referenced_objects if "/data-" in o.name} | \
            {o.name for o in child.new_objects}
        assert {o.name for o in child.referenced_objects} <= allowed


def _live_objects(backups):
    return {o.name for r in backups for o in r.referenced_objects} | \
        {f"{r.container}/{r.prefix}/manifest.json" for r in backups}


@pytest.mark.parametrize("keep", range(5))
def test_any_backup_restores_alone_after_the_others_are_deleted(store_factory, tmp_path, keep):
    store = store_factory()
    drv, _vol, chain = _chain(store, tmp_path)
    live = [r for r, _e in chain]
    order = [i for i in (2, 0, 4, 1, 3) if i != keep]     # middle, oldest, newest, ...
    for victim in order:
        gone = chain[victim][0]
        live.remove(gone)
        drv.delete_manifest(gone.ref)
        others = {o.name for r in live for o in r.referenced_objects}
        only_it = [o.name for o in gone.referenced_objects if o.name not in others]
        drv.delete_objects(only_it)
        drv.delete_objects(only_it)                         # idempotent
        assert set(store.list("")) == _live_objects(live)
        with pytest.raises(IntegrityError, match="missing"):
            drv.restore(gone.ref, str(tmp_path / "gone"))
        expected = {id(r): e for r, e in chain}
        for result in live:
            _restores(drv, tmp_path, result, expected[id(result)])
    assert live == [chain[keep][0]]


def test_incremental_after_its_parent_was_deleted_still_restores(store, tmp_path):
    """The newest backup's parent gone (its manifest and its private objects): a new
    incremental cannot use it and takes a full backup; the old child restores."""
    drv, vol, chain = _chain(store, tmp_path)
    parent, child = chain[3][0], chain[4][0]
    drv.delete_manifest(parent.ref)
    keep = {o.name for r, _e in chain if r is not parent for o in r.referenced_objects}
    drv.delete_objects([o.name for o in parent.referenced_objects if o.name not in keep])
    _restores(drv, tmp_path, child, chain[4][1])
    again = drv.backup(vol, backup_id="c9", volume_id="vol", size_bytes=SIZE, parent=parent.ref)
    assert not again.incremental and "parent backup unusable" in again.message


def test_growth_block_size_and_compression_changes_take_a_full_backup(posix_store, tmp_path):
    drv, vol, chain = _chain(posix_store, tmp_path)
    last = chain[-1][0]
    with open(vol, "r+b") as f:
        f.truncate(SIZE + 64 * KiB)
    grown = drv.backup(vol, backup_id="g1", volume_id="vol", size_bytes=SIZE + 64 * KiB,
                       parent=last.ref)
    assert not grown.incremental and "size changed" in grown.message
    assert grown.manifest["chain_depth"] == 0 and grown.manifest["parent"] is None
    other = small_driver(posix_store, segment_size=32 * KiB, compression="zlib")
    zl = other.backup(vol, backup_id="z1", volume_id="vol", size_bytes=SIZE + 64 * KiB,
                      parent=grown.ref)
    assert not zl.incremental and "compression changed" in zl.message
    deep = small_driver(posix_store, segment_size=32 * KiB, max_chain_depth=4)
    capped = deep.backup(vol, backup_id="d1", volume_id="vol", size_bytes=SIZE + 64 * KiB,
                         parent=grown.ref)
    assert capped.incremental
    t = sparse_target(str(tmp_path / "t"), SIZE + 64 * KiB)
    other.restore(zl.ref, t)
    assert read_file(t) == read_file(vol)


def test_index_spans_may_differ_between_parent_and_child(posix_store, tmp_path):
    """A child written with other index spans than its parent still shares its blocks."""
    _drv, vol, chain = _chain(posix_store, tmp_path)
    wide = small_driver(posix_store, segment_size=32 * KiB, pack_size=40 * KiB,
                        index_span=1 << 30)
    _write(vol, 130 * KiB, b"\x07" * 50)
    child = wide.backup(vol, backup_id="w1", volume_id="vol", size_bytes=SIZE,
                        parent=chain[-1][0].ref)
    assert child.incremental and child.changed_bytes == 4 * KiB
    assert len(child.manifest["index"]) == 1 and len(chain[-1][0].manifest["index"]) > 1
    _restores(wide, tmp_path, child, read_file(vol))


def test_root_holds_only_index_entries(posix_store, tmp_path):
    _drv, _vol, chain = _chain(posix_store, tmp_path)
    full = chain[0][0]
    body = full.manifest
    assert body["version"] == 2 and "frames" not in body and "objects" not in body
    entries = body["index"]
    assert len(entries) == 5                      # 64 KiB spans over 257 KiB
    assert [e["first_block"] for e in entries] == [0, 16, 32, 48, 64]
    assert entries[-1]["block_count"] == 1        # the partial last block's span
    for entry, index in zip(entries, _index_objects(posix_store, full), strict=True):
        assert (index["first_block"], index["block_count"]) == \
            (entry["first_block"], entry["block_count"])
        assert all(entry["first_block"] <= e[5] and e[5] + e[6] <=
                   entry["first_block"] + entry["block_count"] for e in index["extents"])
        assert all("/" in o["name"] for o in index["objects"])     # full store names


def test_malformed_index_objects_are_refused_naming_them(posix_store, tmp_path):
    from workers.datapath.catalog import read_manifest
    drv, _vol, chain = _chain(posix_store, tmp_path)
    result = chain[1][0]
    root = read_manifest(posix_store, result.ref)
    entry = root.index[0]
    name = root.index_object_name(entry)
    good = decode_manifest(posix_store.get(name))
    check_index(good, root, entry)
    cases = [
        (lambda b: b["extents"].reverse(), "bad block range"),
        (lambda b: b["extents"][0].__setitem__(0, 99), "outside its object"),
        (lambda b: b["extents"][0].__setitem__(1, 10 ** 9), "outside its object"),
        (lambda b: b["extents"][0].__setitem__(4, 10 ** 6), "bad frame range"),
        (lambda b: b.__setitem__("prefix", "backup_other"), "belongs elsewhere"),
        (lambda b: b["objects"][0].__setitem__("name", "../x"), "'..'"),
    ]
    for change, match in cases:
        body = decode_manifest(encode_manifest(good))
        change(body)
        with pytest.raises(InvalidBackup, match=match):
            check_index(body, root, entry)
    # stored with the root vouching for it, the restore refuses it too, naming it
    body = decode_manifest(encode_manifest(good))
    body["extents"][0][6] += 1000
    raw = encode_manifest(body)
    posix_store.put(name, raw)
    root_body = decode_manifest(posix_store.get(f"{result.container}/{result.prefix}/"
                                                "manifest.json"))
    root_body["index"][0].update(size=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    posix_store.put(f"{result.container}/{result.prefix}/manifest.json",
                    encode_manifest(root_body))
    with pytest.raises(InvalidBackup, match=name):
        drv.restore(result.ref, str(tmp_path / "t"))
    res = drv.verify(result.ref)
    assert not res.ok and any(name in p for p in res.problems)


def test_verify_ignores_objects_others_reference(posix_store, tmp_path):
    """A prefix may hold objects the backup does not reference (left for another backup,
    or garbage the collector has not swept yet): verify checks only what it references."""
    drv, _vol, chain = _chain(posix_store, tmp_path)
    full = chain[0][0]
    posix_store.put(f"{full.container}/{full.prefix}/data-00000999", b"someone else's")
    assert drv.verify(full.ref).ok


def test_delete_wipes_an_incomplete_backup_prefix_only(posix_store, tmp_path):
    drv, _vol, chain = _chain(posix_store, tmp_path)
    child = chain[1][0]
    drv.delete(child.ref)
    assert not posix_store.list(f"{child.container}/{child.prefix}/")
    _restores(drv, tmp_path, chain[0][0], chain[0][1])


def test_many_small_index_spans(store, tmp_path):
    """An index object per segment, over a sparse volume: every span closes while
    later tasks are still in flight."""
    size = 2 * 1024 * KiB
    vol = write_volume(str(tmp_path / "vol"), size,
                       [(k * 64 * KiB + 4 * KiB, 40 * KiB) for k in range(0, 32, 2)], seed=5)
    drv = small_driver(store, segment_size=32 * KiB, pack_size=64 * KiB, index_span=32 * KiB,
                       max_inflight_bytes=512 * KiB)
    full = drv.backup(vol, backup_id="s1", volume_id="vol", size_bytes=size)
    expected = {"s1": read_file(vol)}
    assert len(full.manifest["index"]) == 32
    names = [e["name"] for e in full.manifest["index"]]
    assert names == sorted(set(names))
    _write(vol, 200 * KiB, b"\x09" * 10)
    inc = drv.backup(vol, backup_id="s2", volume_id="vol", size_bytes=size, parent=full.ref)
    expected["s2"] = read_file(vol)
    assert inc.incremental and inc.changed_bytes == 4 * KiB
    for result in (full, inc):
        target = sparse_target(str(tmp_path / "t"), size)
        drv.restore(result.ref, target)
        assert read_file(target) == expected[result.manifest["backup_id"]]
        assert drv.verify(result.ref).ok


def _vouch(store, result, entry_number, raw):
    """Store ``raw`` as index object ``entry_number`` of ``result``, the root vouching
    for it (its size and SHA-256 updated), so only its structure is wrong."""
    root_name = f"{result.container}/{result.prefix}/manifest.json"
    root = decode_manifest(store.get(root_name))
    entry = root["index"][entry_number]
    store.put(f"{result.container}/{result.prefix}/{entry['name']}", raw)
    entry.update(size=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    store.put(root_name, encode_manifest(root))


def _spoil_index(store, result, entry_number, how):
    """Make index object ``entry_number`` of ``result`` missing, damaged or malformed;
    returns its store name."""
    entry = result.manifest["index"][entry_number]
    name = f"{result.container}/{result.prefix}/{entry['name']}"
    if how == "missing":
        store.delete(name)
    elif how == "damaged":
        data = bytearray(store.get(name))
        data[len(data) // 2] ^= 0x01
        store.put(name, bytes(data))
    else:
        body = decode_manifest(store.get(name))
        body["extents"][0][7] = body["extents"][0][7][:-4]     # digests one block short
        _vouch(store, result, entry_number, encode_manifest(body))
    return name


@pytest.mark.parametrize("how", ["missing", "damaged", "malformed"])
@pytest.mark.parametrize("where", [0, -1])     # read before the scan starts, or at its end
def test_an_unusable_parent_index_object_takes_a_full_backup(store, tmp_path, how, where):
    """A parent whose index object is missing, damaged or malformed cannot serve: the
    incremental becomes a full backup that says why, keeps nothing of the failed attempt,
    references none of the parent's objects and restores byte for byte."""
    drv, vol, chain = _chain(store, tmp_path)
    parent = chain[-1][0]
    spoiled = _spoil_index(store, parent, where, how)
    _write(vol, 5 * KiB, b"\x09" * 300)        # so the failed attempt wrote a pack
    reports = []
    result = drv.backup(vol, backup_id="f1", volume_id="vol", size_bytes=SIZE,
                        container="k9", parent=parent.ref,
                        progress=lambda done, total: reports.append((done, total)))
    assert not result.incremental
    assert result.message.startswith("parent backup unusable (")
    assert result.message.endswith("); took a full backup") and spoiled in result.message
    body = result.manifest
    assert (body["incremental"], body["parent"], body["chain_depth"]) == (False, None, 0)
    own = f"{result.container}/{result.prefix}/"
    assert all(o.name.startswith(own) for o in result.referenced_objects)
    assert set(store.list(own)) == {o.name for o in result.referenced_objects} | \
        {own + "manifest.json"}
    assert reports[-1] == (SIZE, SIZE)
    _restores(drv, tmp_path, result, read_file(vol))
    # the next incremental builds on the full one as usual
    again = drv.backup(vol, backup_id="f2", volume_id="vol", size_bytes=SIZE,
                       container="k9", parent=result.ref)
    assert again.incremental and again.message is None and again.changed_bytes == 0


def test_a_store_failure_reading_the_parent_index_still_fails(store, tmp_path):
    """Not the parent's fault: the store failing while the parent's index is read fails
    the backup (the task layer retries a transient error), leaving nothing behind."""
    from workers.datapath import TransientStoreError
    drv, vol, chain = _chain(store, tmp_path)
    parent = chain[-1][0]
    failing = f"{parent.container}/{parent.prefix}/{parent.manifest['index'][-1]['name']}"
    real_get = store.get

    def get(name, *args, **kwargs):       # a fault this test cannot cause for real
        if name == failing:
            raise TransientStoreError(f"{name}: store unreachable", name=name)
        return real_get(name, *args, **kwargs)

    store.get = get
    with pytest.raises(TransientStoreError, match="unreachable"):
        drv.backup(vol, backup_id="s1", volume_id="vol", size_bytes=SIZE, container="k9",
                   parent=parent.ref)
    assert store.list("k9/backup_s1/") == []
