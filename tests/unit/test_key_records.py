"""The key record format (workers/keyrecords.py): a project's wrapped keys in the store,
sealed under the KEK; anything edited, moved or of another KEK is refused."""
from __future__ import annotations

import base64
import json

import pytest

from orchestrator import keys
from orchestrator.db import utcnow
from workers import keyrecords
from workers.datapath.format import decode_manifest
from workers.datapath.format import encode_manifest
from workers.operations.storage import backup_id_of
from workers.stores import MemoryStore


@pytest.fixture
def provider(settings):
    return keys.kek_provider(settings)


@pytest.fixture
def rows(database, provider):
    with database.scope() as s:
        keys.ensure_keys(s, provider, "p1", utcnow())
        keys.rotate(s, provider, "p1", utcnow())
        return keys.project_rows(s, "p1")


def _canon(rows):
    return sorted((r.key_id, r.purpose, r.wrapped, r.retired_at is None) for r in rows)


def _reseal_less(raw: bytes, change) -> bytes:
    """The record with its body changed and its checksum made right again (a deliberate
    edit, not damage): only the seal can catch it."""
    body = decode_manifest(raw)
    change(body)
    return encode_manifest(body)


def test_a_record_holds_only_wrapped_keys_and_reads_back(provider, rows):
    name = keyrecords.record_name("p1")
    assert name == "_project_keys/project_p1/keyring.json"
    assert backup_id_of(name) is None                     # no backup's prefix
    raw = keyrecords.encode_record(provider, "p1", rows)
    body = decode_manifest(raw)
    assert body["format"] == "orchestrator.key-record" and body["version"] == 1
    assert body["project_id"] == "p1" and body["kek_id"] == provider.kek_id
    assert {k["purpose"] for k in body["keys"]} == {"data", "identity"}
    ring = keys.keyring(provider, rows)
    for key in [*ring.data_keys.values(), ring.identity_key]:
        assert key.hex().encode() not in raw and base64.b64encode(key) not in raw
    got = keyrecords.decode_record(provider, raw, name)
    assert _canon(got) == _canon(rows)
    assert keys.keyring(provider, got) == ring


def test_an_odd_project_id_is_named_by_its_digest():
    name = keyrecords.record_name("a b/../c")
    assert name.startswith("_project_keys/project_sha256-") and name.endswith("/keyring.json")


@pytest.mark.parametrize("edit, message", [
    (lambda b: [k.update(retired_at=None if k["retired_at"] else "2026-01-01T00:00:00")
                for k in b["keys"]], "does not match its seal"),        # current flipped
    (lambda b: b["keys"].pop(), "does not match its seal"),
    (lambda b: b.update(kek_id="0" * 32), "written under key encryption key"),
    (lambda b: b.update(project_id="p2"), "names project p2"),
])
def test_an_edited_record_is_refused(provider, rows, edit, message):
    raw = _reseal_less(keyrecords.encode_record(provider, "p1", rows), edit)
    with pytest.raises(keyrecords.KeyRecordError, match=message):
        keyrecords.decode_record(provider, raw, keyrecords.record_name("p1"))


def test_damage_a_moved_record_and_another_kek_are_refused(provider, rows, tmp_path):
    raw = keyrecords.encode_record(provider, "p1", rows)
    damaged = bytearray(raw)
    damaged[20] ^= 1
    with pytest.raises(keyrecords.KeyRecordError, match="damaged"):
        keyrecords.decode_record(provider, bytes(damaged), keyrecords.record_name("p1"))
    with pytest.raises(keyrecords.KeyRecordError, match="names project p1"):
        keyrecords.decode_record(provider, raw, keyrecords.record_name("p2"))
    path = str(tmp_path / "other-kek")
    keys.create_kek_file(path)
    other = keys.FileKekProvider(path)
    with pytest.raises(keyrecords.KeyRecordError, match="not this deployment's"):
        keyrecords.decode_record(other, raw, keyrecords.record_name("p1"))
    # A row wrapped by another KEK is never written into a record.
    with pytest.raises(keyrecords.KeyRecordError, match="wrapped by this key"):
        keyrecords.encode_record(other, "p1", rows)


def test_writes_are_idempotent_and_never_drop_a_key(database, provider, rows):
    store = MemoryStore()
    assert keyrecords.write_record(store, provider, "p1", rows) is True
    first = store.get(keyrecords.record_name("p1"))
    assert keyrecords.write_record(store, provider, "p1", rows) is False   # nothing new
    assert store.get(keyrecords.record_name("p1")) == first
    # SQL lost its rows, then the project got new keys: the record keeps the old ones,
    # its old current data key retired (SQL's current one wins).
    with database.scope() as s:
        s.query(keys.ProjectKey).delete()
        fresh = keys.ensure_keys(s, provider, "p1", utcnow())
    assert keyrecords.write_record(store, provider, "p1", fresh) is True
    got = keyrecords.read_record(store, provider, "p1")
    assert {r.key_id for r in got} == {r.key_id for r in rows} | {r.key_id for r in fresh}
    current = {r.key_id for r in got if r.retired_at is None}
    assert current == {r.key_id for r in fresh}
    # A record that cannot be trusted is replaced from SQL.
    store.put(keyrecords.record_name("p1"), b"junk")
    assert keyrecords.write_record(store, provider, "p1", fresh) is True
    assert _canon(keyrecords.read_record(store, provider, "p1")) == _canon(fresh)


def test_restore_puts_lost_rows_back_and_reports_a_refused_record(settings, database,
                                                                  provider, rows):
    store = keyrecords.store_of(settings)
    keyrecords.write_record(store, provider, "p1", rows)
    with database.scope() as s:
        keys.ensure_keys(s, provider, "p2", utcnow())
        other = keys.project_rows(s, "p2")
    raw = keyrecords.encode_record(provider, "p2", other)
    store.put(keyrecords.record_name("p2"),
              _reseal_less(raw, lambda b: b["keys"][0].update(retired_at="2026-01-01T00:00:00")))
    with database.scope() as s:
        s.query(keys.ProjectKey).delete()
    report = keyrecords.restore(settings)
    assert report["key_records"] == 2 and report["keys_restored"] == len(rows)
    assert len(report["problems"]) == 1 and "p2" in report["problems"][0] and \
        "refused" in report["problems"][0]
    with database.scope(write=False) as s:
        assert _canon(keys.project_rows(s, "p1")) == _canon(rows)
        assert keys.project_rows(s, "p2") == []
    again = keyrecords.restore(settings)
    assert again["keys_restored"] == 0
    assert json.dumps(report)                               # one JSON line, nothing secret
