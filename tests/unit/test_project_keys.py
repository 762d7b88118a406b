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
        record = {"project_id": "src", "encryption_key_id": ring.current_key_id,
                  "encryption": {"keys": keys.export_rows(keys.project_rows(s, "src"))}}
    keys.check_carried(provider, record)
    bad = {"project_id": "elsewhere", "encryption": record["encryption"]}
    with pytest.raises(keys.KeyError_, match="cannot be unwrapped"):
        keys.check_carried(provider, bad)
    with pytest.raises(keys.KeyError_, match="no wrapped keys"):
        keys.check_carried(provider, {"project_id": "src"})
    rebound = keys.rebound_rows(provider, keys.carried_rows(record, utcnow()), "dst")
    with database.scope() as s:
        # Another project: the keys are extra ones, never current; its own stay current.
        own = keys.keyring(provider, keys.ensure_keys(s, provider, "dst", utcnow()))
        added = keys.register_imported(s, "dst", rebound, source_project_id="src",
                                       now=utcnow())
        assert sorted(added) == sorted(r["key_id"] for r in rebound)
        assert keys.register_imported(s, "dst", rebound, source_project_id="src",
                                      now=utcnow()) == []           # idempotent
        rows = keys.project_rows(s, "dst")
        after = keys.keyring(provider, rows)
        assert (after.current_key_id, after.identity_key_id) == \
            (own.current_key_id, own.identity_key_id)
        got = keys.reading_keyring(provider, rows, ring.current_key_id, ring.identity_key_id)
        # The source project still holds its keys, under the same key ids.
        assert keys.keyring(provider, keys.project_rows(s, "src")) == ring
    assert got.data_keys[ring.current_key_id] == ring.data_keys[ring.current_key_id]
    assert got.identity_key == ring.identity_key
    with database.scope() as s:
        # The project's own record brought back into an empty keyring: current again.
        s.query(keys.ProjectKey).delete()
        keys.register_imported(s, "src", keys.rebound_rows(
            provider, keys.carried_rows(record, utcnow()), "src"),
            source_project_id="src", now=utcnow())
        assert keys.keyring(provider, keys.project_rows(s, "src")) == ring


def test_a_project_holding_only_imported_keys_reads_with_them(database, provider):
    with database.scope() as s:
        ring = keys.keyring(provider, keys.ensure_keys(s, provider, "src", utcnow()))
        rebound = keys.rebound_rows(provider, keys.project_rows(s, "src"), "dst")
        keys.register_imported(s, "dst", rebound, source_project_id="src", now=utcnow())
        rows = keys.project_rows(s, "dst")
    assert all(r.retired_at is not None for r in rows)
    with pytest.raises(keys.KeyError_, match="no current"):
        keys.keyring(provider, rows)
    got = keys.reading_keyring(provider, rows, ring.current_key_id)
    assert got.identity_key == ring.identity_key
    with pytest.raises(keys.KeyError_, match="holds no data key"):
        keys.reading_keyring(provider, rows, "no-such-key")
    # Exported from there (every key an extra one), the record still imports.
    record = {"project_id": "dst", "encryption_key_id": ring.current_key_id,
              "encryption": {"keys": keys.export_rows(rows)}}
    keys.check_carried(provider, record)
    with pytest.raises(keys.KeyError_, match="holds no data key"):
        keys.check_carried(provider, dict(record, encryption_key_id="other"))
