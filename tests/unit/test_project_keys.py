"""Project keys in SQL: made once, rotated, re-wrapped, carried by an export record."""
from __future__ import annotations

import pytest

from orchestrator import keys
from orchestrator.db import utcnow


@pytest.fixture
def provider(settings):
    return keys.kek_provider(settings)


def test_keys_are_made_once_and_only_wrapped(database, provider):
    with database.scope() as s:
        rows = keys.ensure_keys(s, provider, "p1", utcnow())
        again = keys.ensure_keys(s, provider, "p1", utcnow())
        ring = keys.keyring(provider, rows)
        assert sorted(r.purpose for r in rows) == ["data", "identity"]
        assert [r.key_id for r in again] == [r.key_id for r in rows]
        for row in rows:
            key = ring.data_keys.get(row.key_id) or ring.identity_key
            assert key.hex() not in row.wrapped and len(key) == 32
            assert row.kek_id == provider.kek_id
        other = keys.keyring(provider, keys.ensure_keys(s, provider, "p2", utcnow()))
        assert other.identity_key != ring.identity_key
        assert not set(other.data_keys) & set(ring.data_keys)


def test_rotation_keeps_old_data_keys_and_the_identity_key(database, provider):
    with database.scope() as s:
        first = keys.keyring(provider, keys.ensure_keys(s, provider, "p1", utcnow()))
        new = keys.rotate(s, provider, "p1", utcnow())
        ring = keys.keyring(provider, keys.project_rows(s, "p1"))
    assert ring.current_key_id == new.key_id != first.current_key_id
    assert ring.data_keys[first.current_key_id] == first.data_keys[first.current_key_id]
    assert ring.identity_key == first.identity_key


def test_rewrap_under_a_new_kek(database, provider, tmp_path):
    with database.scope() as s:
        before = keys.keyring(provider, keys.ensure_keys(s, provider, "p1", utcnow()))
    path = str(tmp_path / "new")
    keys.create_kek_file(path)
    new = keys.FileKekProvider(path)
    with database.scope() as s:
        assert keys.rewrap(s, provider, new) == 2
        assert keys.rewrap(s, provider, new) == 0          # idempotent
    with database.scope(write=False) as s:
        rows = keys.project_rows(s, "p1")
        assert keys.keyring(new, rows) == before
        with pytest.raises(keys.KeyError_, match="cannot be unwrapped"):
            keys.keyring(provider, rows)


def test_carried_keys_are_checked_and_rebound_to_the_importing_project(database, provider):
    with database.scope() as s:
        ring = keys.keyring(provider, keys.ensure_keys(s, provider, "src", utcnow()))
        record = {"project_id": "src", "encryption": {
            "keys": keys.export_rows(keys.project_rows(s, "src"))}}
    keys.check_carried(provider, record)
    bad = {"project_id": "elsewhere", "encryption": record["encryption"]}
    with pytest.raises(keys.KeyError_, match="cannot be unwrapped"):
        keys.check_carried(provider, bad)
    with pytest.raises(keys.KeyError_, match="no wrapped keys"):
        keys.check_carried(provider, {"project_id": "src"})
    with database.scope() as s:
        s.query(keys.ProjectKey).delete()
        keys.adopt_rows(s, provider, keys.carried_rows(record, utcnow()), "dst")
        got = keys.keyring(provider, keys.project_rows(s, "dst"))
    assert got.data_keys == ring.data_keys and got.identity_key == ring.identity_key
