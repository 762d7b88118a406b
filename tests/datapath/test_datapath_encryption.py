"""Encryption at rest in the data path: EncryptedStore + keyed block digests."""
import base64
import os

import pytest
from dp_helpers import KiB
from dp_helpers import garbage_target
from dp_helpers import read_file
from dp_helpers import small_driver
from dp_helpers import write_volume

from orchestrator.keys import Keyring
from workers.datapath import IntegrityError
from workers.datapath import decode_manifest
from workers.stores import make_store
from workers.stores.encrypted import MAGIC
from workers.stores.encrypted import encrypting

SIZE = 192 * KiB + 512


def _ring(project="p1", data=("d1",), identity="i1", seed=0):
    keys = {kid: bytes([seed + n + 1]) * 32 for n, kid in enumerate(data)}
    return Keyring(project, data[-1], keys, identity, bytes([seed + 100]) * 32)


def _with_current(ring, key_id, key):
    return Keyring(ring.project_id, key_id, {**ring.data_keys, key_id: key},
                   ring.identity_key_id, ring.identity_key)


@pytest.fixture
def raw(tmp_path):
    return make_store("posix", path=str(tmp_path / "store"))


def _backup(drv, tmp_path, backup_id, parent=None, extents=((0, 40 * KiB),), seed=0,
            vol=None):
    vol = vol or write_volume(str(tmp_path / "vol"), SIZE, extents, seed=seed)
    result = drv.backup(vol, backup_id=backup_id, volume_id="vol", size_bytes=SIZE,
                        parent=parent)
    return result, read_file(vol)


def _restored(drv, tmp_path, ref):
    target = garbage_target(str(tmp_path / "target"), SIZE)
    drv.restore(ref, target)
    return read_file(target)


def test_every_object_is_ciphertext_and_restores(raw, tmp_path):
    drv = encrypting(small_driver(raw), _ring())
    secret = b"the quick secret volume content " * 64
    vol = str(tmp_path / "vol")
    with open(vol, "wb") as f:
        f.truncate(SIZE)
        f.write(secret)
    result, expected = _backup(drv, tmp_path, "b1", vol=vol)
    names = raw.list("")
    assert names
    for name in names:
        stored = raw.get(name)
        assert stored.startswith(MAGIC), name
        assert b"quick secret" not in stored and b"backup_id" not in stored
    assert result.manifest["digest"] == "hmac-sha256"
    assert result.manifest["digest_key_id"] == "i1"
    assert _restored(drv, tmp_path, result.ref) == expected
    assert drv.verify(result.ref).ok


def test_equal_content_in_two_projects_has_different_block_digests(raw, tmp_path):
    a = encrypting(small_driver(raw), _ring("pa", seed=0))
    b = encrypting(small_driver(raw), _ring("pb", data=("d9",), identity="i9", seed=50))
    ra, _ = _backup(a, tmp_path, "ba")
    rb, _ = _backup(b, tmp_path, "bb")
    ia = decode_manifest(a.store.get(f"{ra.container}/{ra.prefix}/"
                                     f"{ra.manifest['index'][0]['name']}"))
    ib = decode_manifest(b.store.get(f"{rb.container}/{rb.prefix}/"
                                     f"{rb.manifest['index'][0]['name']}"))
    digests = {e[-1] for e in ia["extents"]}
    assert digests and digests.isdisjoint({e[-1] for e in ib["extents"]})
    # And a plain backup's digests are plain SHA-256: neither equals it.
    plain = small_driver(make_store("memory"))
    rp, _ = _backup(plain, tmp_path, "bp")
    assert rp.manifest["digest"] == "sha256"


def test_wrong_projects_key_fails_clearly_and_writes_nothing(raw, tmp_path):
    drv = encrypting(small_driver(raw), _ring("p1"))
    result, _ = _backup(drv, tmp_path, "b1")
    other = encrypting(small_driver(raw), _ring("p2", data=("d2",), identity="i2", seed=7))
    target = str(tmp_path / "untouched")
    with open(target, "wb") as f:
        f.write(b"\x5a" * SIZE)
    with pytest.raises(IntegrityError, match=r"data key d1.*does not hold"):
        other.restore(result.ref, target)
    assert read_file(target) == b"\x5a" * SIZE
    verified = other.verify(result.ref)
    assert not verified.ok and "manifest.json" in verified.problems[0]


def test_same_key_id_but_another_key_does_not_authenticate(raw, tmp_path):
    drv = encrypting(small_driver(raw), _ring())
    result, _ = _backup(drv, tmp_path, "b1")
    forged = encrypting(small_driver(raw), Keyring("p1", "d1", {"d1": b"\x77" * 32}, "i1",
                                                   b"\x01" * 32))
    with pytest.raises(IntegrityError, match="does not authenticate"):
        forged.restore(result.ref, str(tmp_path / "t"))


def test_a_flipped_byte_in_any_object_is_detected_naming_it(raw, tmp_path):
    drv = encrypting(small_driver(raw), _ring())
    result, _ = _backup(drv, tmp_path, "b1", extents=((0, 120 * KiB),))
    names = raw.list("")
    assert len(names) >= 3                     # manifest, index, packs
    for name in names:
        original = raw.get(name)
        for where in (5, len(original) // 2, len(original) - 1):
            damaged = bytearray(original)
            damaged[where] ^= 0x01
            raw.put(name, bytes(damaged))
            with pytest.raises(IntegrityError) as info:
                drv.restore(result.ref, str(tmp_path / "t"))
            assert name in str(info.value)
            verified = drv.verify(result.ref)
            assert not verified.ok and any(name in p for p in verified.problems)
        raw.put(name, original)
    assert drv.verify(result.ref).ok


def test_swapping_objects_between_backups_is_detected(raw, tmp_path):
    drv = encrypting(small_driver(raw), _ring())
    r1, _ = _backup(drv, tmp_path, "b1", seed=1)
    r2, _ = _backup(drv, tmp_path, "b2", seed=2)
    m1 = f"{r1.container}/{r1.prefix}/manifest.json"
    m2 = f"{r2.container}/{r2.prefix}/manifest.json"
    one, two = raw.get(m1), raw.get(m2)
    raw.put(m1, two)
    raw.put(m2, one)
    for ref, name in ((r1.ref, m1), (r2.ref, m2)):
        with pytest.raises(IntegrityError, match="does not authenticate") as info:
            drv.restore(ref, str(tmp_path / "t"))
        assert name in str(info.value)
    raw.put(m1, one)
    raw.put(m2, two)
    p1 = [n for n in raw.list(f"{r1.container}/{r1.prefix}/") if "manifest" not in n]
    p2 = [n for n in raw.list(f"{r2.container}/{r2.prefix}/") if "manifest" not in n]
    a, b = raw.get(p1[0]), raw.get(p2[0])
    raw.put(p1[0], b)
    with pytest.raises(IntegrityError, match="does not authenticate"):
        drv.restore(r1.ref, str(tmp_path / "t"))
    raw.put(p1[0], a)
    assert drv.verify(r1.ref).ok and drv.verify(r2.ref).ok


def test_rotation_old_and_new_backups_restore_and_incremental_shares_old_packs(raw,
                                                                              tmp_path):
    before = _ring()
    drv = encrypting(small_driver(raw), before)
    vol = write_volume(str(tmp_path / "vol"), SIZE, [(0, 150 * KiB)], seed=3)
    full, full_data = _backup(drv, tmp_path, "full", vol=vol)
    after = _with_current(before, "d2", b"\x42" * 32)
    rotated = encrypting(small_driver(raw), after)
    with open(vol, "r+b") as f:
        f.seek(8 * KiB)
        f.write(b"\x09" * 100)
    inc, inc_data = _backup(rotated, tmp_path, "inc", parent=full.ref, vol=vol)
    assert inc.incremental, inc.message
    own = set(raw.list(f"{inc.container}/{inc.prefix}/"))
    shared = [o.name for o in inc.referenced_objects if o.name not in own]
    assert shared, "the incremental shares packs of its parent"
    key_of = {n: raw.get(n)[6:6 + raw.get(n)[5]].decode() for n in raw.list("")}
    assert {key_of[n] for n in shared} == {"d1"} and {key_of[n] for n in own} == {"d2"}
    assert _restored(rotated, tmp_path, full.ref) == full_data
    assert _restored(rotated, tmp_path, inc.ref) == inc_data
    assert rotated.verify(inc.ref).ok
    # The old keyring alone cannot open what the new key wrote.
    with pytest.raises(IntegrityError, match="data key d2"):
        drv.restore(inc.ref, str(tmp_path / "t"))


def test_a_plain_parent_gives_an_encrypted_full_backup(raw, tmp_path):
    plain = small_driver(raw)
    vol = write_volume(str(tmp_path / "vol"), SIZE, [(0, 40 * KiB)], seed=4)
    first, _ = _backup(plain, tmp_path, "plain", vol=vol)
    # The worker never hands an encrypted backup a plain parent; the data path also
    # refuses one whose digests are not its own (read here through the plain store).
    keyed = small_driver(raw)
    keyed.config = __import__("dataclasses").replace(keyed.config, digest_key=b"k" * 32,
                                                     digest_key_id="i1")
    second, data = _backup(keyed, tmp_path, "keyed", parent=first.ref, vol=vol)
    assert not second.incremental and "digests" in second.message
    assert _restored(keyed, tmp_path, second.ref) == data
    assert _restored(keyed, tmp_path, first.ref) == read_file(vol)


def test_kek_wrapping_is_bound_to_project_key_and_purpose(tmp_path):
    from orchestrator import keys
    path = str(tmp_path / "kek")
    assert keys.create_kek_file(path) and not keys.create_kek_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    provider = keys.FileKekProvider(path)
    wrapped = provider.wrap(b"\x01" * 32, project_id="p", key_id="k", purpose="data")
    assert provider.unwrap(wrapped, project_id="p", key_id="k", purpose="data") == b"\x01" * 32
    for other in (dict(project_id="q", key_id="k", purpose="data"),
                  dict(project_id="p", key_id="j", purpose="data"),
                  dict(project_id="p", key_id="k", purpose="identity")):
        with pytest.raises(keys.KeyError_, match="cannot be unwrapped"):
            provider.unwrap(wrapped, **other)
    env = keys.EnvKekProvider(base64.b64encode(b"\x02" * 32).decode())
    with pytest.raises(keys.KeyError_):
        env.unwrap(wrapped, project_id="p", key_id="k", purpose="data")
    with pytest.raises(keys.KeyError_, match="32 bytes"):
        keys.EnvKekProvider(base64.b64encode(b"short").decode())
    with pytest.raises(keys.KeyError_, match="cannot read"):
        keys.FileKekProvider(str(tmp_path / "missing"))


@pytest.mark.parametrize("key_len", [0, 1, 32, 63, 64, 65, 200])
def test_keyed_block_digest_is_hmac_sha256(key_len):
    """The keyed block digest is RFC 2104 HMAC-SHA256, for any key and block length
    (the manifest says "hmac-sha256": another implementation must be able to check it)."""
    import hmac
    import random

    from workers.datapath.config import DriverConfig
    rng = random.Random(key_len)
    key = rng.randbytes(key_len)
    digest = DriverConfig(digest_key=key, digest_key_id="k").block_digest
    for size in (0, 1, 55, 64, 4096, 16384, 16385):
        data = rng.randbytes(size)
        assert digest(data) == hmac.digest(key, data, "sha256")
        assert digest(memoryview(data)) == hmac.digest(key, data, "sha256")
    assert DriverConfig().block_digest(b"x") != digest(b"x")


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 * 65536 + 7])
def test_stored_form_is_aes_gcm_of_the_whole_object(size):
    """The store seals and opens in pieces, but the stored form stays the one
    docs/format.md gives: header | AES-256-GCM(whole object, AAD = name NUL header) | tag,
    so objects written before and after read alike."""
    import os as _os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from workers.stores import make_store
    from workers.stores.encrypted import NONCE_LEN
    from workers.stores.encrypted import EncryptedStore
    from workers.stores.encrypted import parse_header

    class Ring:
        current_key_id = "k1"
        data_keys = {"k1": _os.urandom(32)}
        identity_key_id = "i1"
        identity_key = _os.urandom(32)
    inner = make_store("memory")
    store = EncryptedStore(inner, Ring)
    data = _os.urandom(size)
    store.put_parts("c/obj", [data[:size // 3], data[size // 3:]])
    raw = inner.get("c/obj")
    key_id, nonce, end = parse_header(raw, "c/obj")
    assert key_id == "k1" and len(nonce) == NONCE_LEN
    aead = AESGCM(Ring.data_keys["k1"])
    assert aead.decrypt(nonce, raw[end:], b"c/obj\0" + raw[:end]) == data
    # and an object sealed in one call opens
    header = raw[:end - NONCE_LEN] + (nonce2 := _os.urandom(NONCE_LEN))
    inner.put("c/other", header + aead.encrypt(nonce2, data, b"c/other\0" + header))
    assert store.get("c/other") == data
