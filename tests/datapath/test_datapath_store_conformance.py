"""One conformance suite, run on every object store (POSIX, S3 via moto, memory)."""
import os
import threading

import dp_helpers
import pytest

from workers.datapath import DataPathError
from workers.datapath import InvalidContainer
from workers.datapath import NotFound
from workers.datapath import StoreError
from workers.datapath import validate_container
from workers.datapath import validate_object_name
from workers.stores import MemoryStore
from workers.stores import ObjectStore
from workers.stores import PosixStore
from workers.stores import make_store

BAD_NAMES = ["", "/abs/name", "a/../b", "..", "a/./b", "a//b", "a/b/", "sp ace", "uni\u00e9",
             "semi;colon", "back\\slash", "a/" + "x" * 256, "star*", "t~ilde", "q?"]
GOOD_NAMES = ["a", "a/b/c", "A-Z_0.9/x-y.z", "..a/b..", ".hidden/x"]


def test_is_object_store(store):
    assert isinstance(store, ObjectStore)
    assert store.kind in ("posix", "s3", "memory") and store.describe()


def test_object_store_is_an_abstract_interface():
    with pytest.raises(TypeError):
        ObjectStore()

    class HalfStore(ObjectStore):
        def put(self, name, data):
            pass

    with pytest.raises(TypeError):
        HalfStore()


def test_put_keeps_a_copy(store):
    buf = bytearray(b"original")
    store.put("c/copy", buf)
    buf[:] = b"changed!"
    assert store.get("c/copy") == b"original"


def test_concurrent_puts_gets_lists_and_deletes(store):
    errors = []

    def worker(k):
        try:
            for i in range(15):
                name = f"t/{k}/obj-{i}"
                store.put(name, b"%d-%d" % (k, i) * 100)
                assert store.get(name) == b"%d-%d" % (k, i) * 100
                assert name in store.list(f"t/{k}/")
                if i % 3 == 0:
                    store.delete(name)
        except Exception as e:   # re-raised in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list("t/")) == 6 * 10


def test_put_get_roundtrip_binary_and_empty(store):
    blob = bytes(range(256)) * 1000 + b"\0\0\n"
    store.put("c1/obj", blob)
    store.put("c1/empty", b"")
    store.put("c1/mv", memoryview(b"from a memoryview"))
    assert store.get("c1/obj") == blob
    assert store.get("c1/empty") == b""
    assert store.get("c1/mv") == b"from a memoryview"
    assert store.exists("c1/obj") and store.exists("c1/empty")


def test_get_buffer_is_a_private_copy(store):
    """get_buffer gives the object's bytes in a bytearray the caller may change (the
    encrypted store decrypts in it) without changing what is stored."""
    blob = bytes(range(256)) * 4099
    store.put("c1/buf", blob)
    store.put("c1/none", b"")
    buf = store.get_buffer("c1/buf")
    assert isinstance(buf, bytearray) and buf == blob
    buf[:5] = b"XXXXX"
    assert store.get("c1/buf") == blob
    assert store.get_buffer("c1/none") == bytearray()
    with pytest.raises(NotFound):
        store.get_buffer("c1/missing")


def test_overwrite_replaces_whole_object(store):
    store.put("c/x", b"long old content" * 100)
    store.put("c/x", b"new")
    assert store.get("c/x") == b"new"


def test_missing_object_raises_notfound(store):
    with pytest.raises(NotFound) as ei:
        store.get("nope/missing")
    assert isinstance(ei.value, StoreError) and isinstance(ei.value, DataPathError)
    assert ei.value.kind == "not_found"
    assert not store.exists("nope/missing")


def test_delete_and_delete_missing_is_fine(store):
    store.put("d/a", b"1")
    store.delete("d/a")
    assert not store.exists("d/a")
    with pytest.raises(NotFound):
        store.get("d/a")
    store.delete("d/a")            # again: no error
    store.delete("never/was/here")


def test_list_is_sorted_string_prefix(store):
    names = ["p/a/1", "p/a/2", "p/ab/1", "p/b", "q/a", "p/a10/z"]
    for n in names:
        store.put(n, n.encode())
    assert store.list("") == sorted(names)
    assert store.list("p/") == sorted(n for n in names if n.startswith("p/"))
    assert store.list("p/a/") == ["p/a/1", "p/a/2"]
    assert store.list("p/a") == ["p/a/1", "p/a/2", "p/a10/z", "p/ab/1"]
    assert store.list("p/a1") == ["p/a10/z"]
    assert store.list("zzz/") == []
    store.delete("p/a/1")
    assert store.list("p/a/") == ["p/a/2"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_names_rejected_everywhere(store, bad):
    for op in (lambda: store.put(bad, b"x"), lambda: store.get(bad),
               lambda: store.delete(bad), lambda: store.exists(bad)):
        with pytest.raises(InvalidContainer):
            op()
    assert store.list("") == []


@pytest.mark.parametrize("good", GOOD_NAMES)
def test_good_names_accepted(store, good):
    store.put(good, b"ok")
    assert store.get(good) == b"ok"
    assert good in store.list("")


def test_validate_container_messages():
    assert validate_container("ab/cd/abcd-1") == "ab/cd/abcd-1"
    assert validate_object_name("x/y") == "x/y"
    for bad, word in [("/etc", "relative"), ("a/../b", "'..'"), ("a b", "characters"),
                      ("x" * 256, "255"), ("", "empty"), ("a//b", "empty")]:
        with pytest.raises(InvalidContainer) as ei:
            validate_container(bad)
        assert word in str(ei.value)
        assert isinstance(ei.value, ValueError)
    with pytest.raises(InvalidContainer):
        validate_container(None)


def test_unknown_store_kind():
    with pytest.raises(DataPathError):
        make_store("ftp")


def test_make_store_kinds(tmp_path):
    assert isinstance(make_store("memory"), MemoryStore)
    assert isinstance(make_store("posix", path=str(tmp_path / "p")), PosixStore)


def test_posix_layout_atomic_and_no_temp_leftovers(tmp_path):
    st = make_store("posix", path=str(tmp_path / "root"))
    st.put("a/b/c", b"data")
    assert (tmp_path / "root" / "a" / "b" / "c").read_bytes() == b"data"
    leftovers = [f for _d, _s, fs in os.walk(tmp_path / "root") for f in fs if f != "c"]
    assert leftovers == []
    # a temporary file from an interrupted put is never listed
    (tmp_path / "root" / "a" / "b" / "c.~tmp~dead").write_bytes(b"partial")
    assert st.list("a/") == ["a/b/c"]
    # deleting the last object removes its now-empty directories
    os.unlink(tmp_path / "root" / "a" / "b" / "c.~tmp~dead")
    st.delete("a/b/c")
    assert not (tmp_path / "root" / "a").exists()
    assert (tmp_path / "root").is_dir()


def test_s3_missing_bucket_is_permanent_error(moto_endpoint):
    st = make_store("s3", endpoint_url=moto_endpoint, bucket="no-such-bucket-xyz",
                    **dp_helpers.S3_KEYS)
    with pytest.raises(StoreError) as ei:
        st.put("a/b", b"x")
    assert ei.value.kind == "permanent"


def test_s3_unreachable_endpoint_is_transient():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()   # nothing listens there now
    st = make_store("s3", endpoint_url=f"http://127.0.0.1:{port}", bucket="b", retries=1,
                    connect_timeout=1, **dp_helpers.S3_KEYS)
    with pytest.raises(StoreError) as ei:
        st.get("a/b")
    assert ei.value.kind == "transient"


# ------------------------------------------------------------ what format version 2 needs

def test_list_detailed_sizes_and_times(store):
    import time
    before = time.time()
    store.put("ld/a/one", b"1")
    store.put("ld/a/two", b"22" * 1000)
    store.put("ld/b", b"")
    store.put("other/x", b"x")
    after = time.time()
    found = store.list_detailed("ld/")
    assert [(i.name, i.size) for i in found] == [("ld/a/one", 1), ("ld/a/two", 2000),
                                                  ("ld/b", 0)]
    for info in found:       # UTC epoch seconds; S3 keeps whole seconds
        assert before - 2 <= info.mtime <= after + 2, info
    assert [i.name for i in store.list_detailed("")] == store.list("")
    assert store.list_detailed("none/") == []
    with pytest.raises(InvalidContainer):
        store.list_detailed("/abs")


def test_delete_objects_in_batches_and_idempotent(store):
    names = [f"del/{k // 100:02d}/obj-{k:04d}" for k in range(1005)]   # > one S3 batch
    for name in names:
        store.put(name, b"x")
    store.put("del-keep/a", b"k")
    store.delete_objects([*names[:3], "del/never/was"])
    assert len(store.list("del/")) == 1002
    store.delete_objects(names)
    store.delete_objects(names)               # again: nothing left, no error
    store.delete_objects([])
    assert store.list("del/") == [] and store.list("del-keep/") == ["del-keep/a"]


def test_delete_objects_validates_every_name_first(store):
    store.put("dv/a", b"a")
    with pytest.raises(InvalidContainer):
        store.delete_objects(["dv/a", "../escape"])
    assert store.exists("dv/a")


def test_version_2_objects_and_packs_shared_across_prefixes(store, tmp_path):
    """Index objects, and an incremental in another container whose index references
    the full backup's packs: restore, verify, list and delete on every store."""
    from dp_helpers import KiB
    from dp_helpers import read_file
    from dp_helpers import small_driver
    from dp_helpers import sparse_target
    from dp_helpers import write_volume
    size = 160 * KiB
    vol = write_volume(str(tmp_path / "vol"), size, [(0, 64 * KiB), (96 * KiB, 60 * KiB)])
    drv = small_driver(store, index_span=64 * KiB)
    full = drv.backup(vol, backup_id="f2", volume_id="v", size_bytes=size, container="ca")
    with open(vol, "r+b") as f:
        f.seek(5 * KiB)
        f.write(b"changed")
    inc = drv.backup(vol, backup_id="i2", volume_id="v", size_bytes=size, container="cb",
                     parent=full.ref)
    assert inc.incremental
    shared = [o for o in inc.referenced_objects if o.name.startswith("ca/backup_f2/data-")]
    assert shared, "the incremental references packs in the full backup's prefix"
    listed = {i.name: i.size for i in drv.list_objects("")}
    for obj in full.referenced_objects + inc.referenced_objects:
        assert listed[obj.name] == obj.size
    assert sum(1 for n in listed if "/index-" in n) == len(full.manifest["index"]) + \
        len(inc.manifest["index"])
    drv.delete_manifest(full.ref)               # the full goes; only what it alone used
    keep = {o.name for o in inc.referenced_objects}
    drv.delete_objects([o.name for o in full.referenced_objects if o.name not in keep])
    assert set(store.list("ca/")) == {o.name for o in shared}
    target = sparse_target(str(tmp_path / "t"), size)
    drv.restore(inc.ref, target)
    assert read_file(target) == read_file(vol)
    assert drv.verify(inc.ref).ok


def _multipart_store(moto_endpoint):
    from workers.stores import S3Store
    store = dp_helpers.new_s3_store(moto_endpoint)
    return S3Store(endpoint_url=moto_endpoint, bucket=store.bucket,
                   multipart_threshold=6 * 1024 * 1024, multipart_part_size=5 * 1024 * 1024,
                   **dp_helpers.S3_KEYS)


def test_s3_multipart_upload_above_the_threshold(moto_endpoint):
    store = _multipart_store(moto_endpoint)
    calls = []
    real = store._client.upload_part

    def counting(**kw):
        calls.append(kw["PartNumber"])
        return real(**kw)

    store._client.upload_part = counting
    blob = os.urandom(13 * 1024 * 1024 + 7)
    store.put("mp/big", blob)
    store.put("mp/small", blob[:6 * 1024 * 1024])          # at the threshold: one PUT
    assert calls == [1, 2, 3]
    assert store.get("mp/big") == blob and store.get("mp/small") == blob[:6 * 1024 * 1024]
    assert store.incomplete_uploads("mp/") == []


def test_s3_failed_multipart_upload_is_aborted(moto_endpoint):
    from workers.datapath import StoreError
    store = _multipart_store(moto_endpoint)
    real = store._client.upload_part

    def failing(**kw):
        if kw["PartNumber"] == 2:
            raise RuntimeError("connection lost")
        return real(**kw)

    store._client.upload_part = failing
    with pytest.raises(StoreError):
        store.put("mp/broken", os.urandom(12 * 1024 * 1024))
    assert not store.exists("mp/broken")
    assert store.incomplete_uploads("mp/") == []


def test_s3_multipart_settings_are_checked(moto_endpoint):
    from workers.stores import S3Store
    with pytest.raises(ValueError):
        S3Store(endpoint_url=moto_endpoint, bucket="b", multipart_part_size=1024,
                **dp_helpers.S3_KEYS)
