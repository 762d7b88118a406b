"""The reference counts of shared objects (orchestrator/persistence/objects.py): pin,
register, release, adopt and the collector's claims, on SQLite and on PostgreSQL, and the
races between a pin and a claim of the same object on PostgreSQL, interleaved for real."""
from __future__ import annotations

import random
import threading
import time

import pytest
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import text

from orchestrator import db as dbmod
from orchestrator.config import Settings
from orchestrator.db import utcnow
from orchestrator.migrate import upgrade
from orchestrator.models import BackupObject
from orchestrator.models import StoredObject
from orchestrator.persistence import objects
from orchestrator.persistence.objects import ObjectInfo
from orchestrator.persistence.objects import UnpinnedReference

STORE = "posix:/srv/backups"


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    url = ""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").url
    s = Settings(state_dir=str(tmp_path), broker_url="memory://", database_url=url)
    upgrade(s.database_url)
    return s


@pytest.fixture
def pg_settings(tmp_path, postgres):
    s = Settings(state_dir=str(tmp_path), broker_url="memory://", database_url=postgres.url)
    upgrade(s.database_url)
    return s


@pytest.fixture
def db(settings):
    d = dbmod.get_database(settings.database_url)
    yield d
    dbmod._databases.pop(settings.database_url, None)
    d.dispose()


@pytest.fixture
def pg(pg_settings):
    d = dbmod.get_database(pg_settings.database_url)
    yield d
    dbmod._databases.pop(pg_settings.database_url, None)
    d.dispose()


def infos(*names: str) -> list[ObjectInfo]:
    return [ObjectInfo(n, 100, "0" * 64) for n in names]


def complete(db, backup_id: str, new: list[str], referenced: list[str]) -> None:
    with db.scope() as s:
        objects.register(s, backup_id, STORE, new=infos(*new), referenced=referenced,
                         now=utcnow())


def counts(db) -> dict[str, tuple[int, str]]:
    with db.scope(write=False) as s:
        return {name: (refs, state) for name, refs, state in s.execute(
            select(StoredObject.name, StoredObject.ref_count, StoredObject.state))}


def check_consistent(db) -> None:
    """Every ref_count equals its rows, and nothing removing is referenced."""
    with db.scope(write=False) as s:
        rows = dict(s.execute(select(BackupObject.object_id, func.count())
                              .group_by(BackupObject.object_id)).all())
        for oid, refs, state in s.execute(select(StoredObject.id, StoredObject.ref_count,
                                                 StoredObject.state)):
            assert refs == rows.get(oid, 0), (oid, refs, rows.get(oid, 0))
            assert not (state == objects.REMOVING and refs), oid


def test_a_chain_shares_objects_and_deleting_the_middle_frees_only_its_own(db):
    complete(db, "b1", ["p1", "p2", "i1"], ["p1", "p2", "i1"])
    with db.scope() as s:
        assert objects.pin(s, "b2", "b1") == 3
    # b2 reuses p1, writes p3 and its index; the pins of p2 and i1 are dropped.
    complete(db, "b2", ["p3", "i2"], ["p1", "p3", "i2"])
    with db.scope() as s:
        objects.pin(s, "b3", "b2")
    complete(db, "b3", ["i3"], ["p1", "p3", "i3"])
    assert counts(db) == {"p1": (3, "live"), "p2": (1, "live"), "i1": (1, "live"),
                          "p3": (2, "live"), "i2": (1, "live"), "i3": (1, "live")}
    with db.scope() as s:
        assert objects.release(s, "b2", now=utcnow()) == 3
    with db.scope() as s:
        claimed = objects.claim_garbage(s, STORE)
    assert [name for _, name, _ in claimed] == ["i2"]
    with db.scope() as s:
        objects.forget(s, [oid for oid, _, _ in claimed])
    assert counts(db) == {"p1": (2, "live"), "p2": (1, "live"), "i1": (1, "live"),
                          "p3": (1, "live"), "i3": (1, "live")}
    check_consistent(db)


def test_a_pin_is_idempotent_and_a_failed_backup_gives_its_pins_back(db):
    complete(db, "b1", ["p1"], ["p1"])
    with db.scope() as s:
        assert objects.pin(s, "b2", "b1") == 1
        assert objects.pin(s, "b2", "b1") == 0
    assert counts(db)["p1"] == (2, "live")
    with db.scope() as s:
        objects.release(s, "b2", now=utcnow())
    assert counts(db)["p1"] == (1, "live")
    check_consistent(db)


def test_a_result_referencing_an_unpinned_object_is_refused_and_writes_nothing(db):
    complete(db, "b1", ["p1"], ["p1"])
    with pytest.raises(UnpinnedReference, match="did not pin"):
        complete(db, "b2", ["p2"], ["p1", "p2"])      # b2 never pinned b1's p1
    assert counts(db) == {"p1": (1, "live")}


def test_a_claimed_object_is_never_pinned_nor_adopted(db):
    complete(db, "b1", ["p1", "p2"], ["p1", "p2"])
    complete(db, "b0", ["q"], ["q"])
    with db.scope() as s:
        objects.release(s, "b1", now=utcnow())
    # b2 was given b1's references before they went: a pin from a released backup finds
    # nothing; a claim makes p1 and p2 final.
    with db.scope() as s:
        claimed = objects.claim_garbage(s, STORE)
    assert {name for _, name, _ in claimed} == {"p1", "p2"}
    with db.scope() as s:
        # an import naming p1 now must fail, not resurrect it
        with pytest.raises(UnpinnedReference, match="being removed"):
            objects.adopt(s, "b9", STORE, infos("p1"), now=utcnow())
    assert counts(db)["p1"] == (0, "removing")
    # a collection that crashed after claiming returns them again
    with db.scope() as s:
        again = objects.claim_garbage(s, STORE)
    assert {name for _, name, _ in again} == {"p1", "p2"}
    check_consistent(db)


def test_unknown_objects_are_claimed_unless_a_row_appeared(db):
    complete(db, "b1", ["p1"], ["p1"])
    with db.scope() as s:
        claimed = objects.claim_unknown(s, STORE, infos("p1", "leftover"), now=utcnow())
    assert [name for _, name, _ in claimed] == ["leftover"]
    assert counts(db) == {"p1": (1, "live"), "leftover": (0, "removing")}
    with db.scope() as s:
        objects.forget(s, [oid for oid, _, _ in claimed])
    assert counts(db) == {"p1": (1, "live")}


def test_adopt_references_each_object_once(db):
    with db.scope() as s:
        objects.adopt(s, "imp", STORE, infos("p1", "p2"), now=utcnow())
        objects.adopt(s, "imp", STORE, infos("p1", "p2"), now=utcnow())
    assert counts(db) == {"p1": (1, "live"), "p2": (1, "live")}
    check_consistent(db)


# ----------------------------------------------------------------------------- PostgreSQL


def _waiting_for_lock(database) -> bool:
    with database.scope(write=False) as s:
        return bool(s.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()")).scalar())


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def go():
        try:
            out["value"] = fn()
        except Exception as exc:
            out["error"] = exc

    t = threading.Thread(target=go)
    t.start()
    return t, out


def _wait_until(predicate, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_pg_a_claim_waits_for_nothing_and_skips_an_object_being_pinned(pg):
    complete(pg, "b1", ["p1"], ["p1"])
    with pg.scope() as s:
        objects.release(s, "b1", now=utcnow())
    complete(pg, "b0", ["p1x"], ["p1x"])
    # b1's p1 has no reference; b2 pins it "from" a backup that still has it: model it by
    # an adopt in an open transaction (row locked, ref not yet committed).
    pinning = pg.session()
    objects.adopt(pinning, "b2", STORE, infos("p1"), now=utcnow())
    try:
        with pg.scope() as s:
            started = time.monotonic()
            claimed = objects.claim_garbage(s, STORE)
            assert time.monotonic() - started < 2.0     # skipped, not waited for
        assert claimed == []
    finally:
        pinning.commit()
        pinning.close()
    with pg.scope() as s:
        assert objects.claim_garbage(s, STORE) == []
    assert counts(pg)["p1"] == (1, "live")
    check_consistent(pg)


def test_pg_a_pin_meeting_a_claim_of_the_same_object_loses_cleanly(pg):
    complete(pg, "b1", ["p1", "p2"], ["p1", "p2"])
    complete(pg, "keep", ["k"], ["k"])
    with pg.scope() as s:
        objects.release(s, "b1", now=utcnow())     # p1 and p2 are unreferenced now
    # A source listing p1 and p2 without counting them: only to give pin() something to
    # copy, as from a backup that still lists them.
    with pg.scope() as s:
        for oid in s.scalars(select(StoredObject.id).where(StoredObject.ref_count == 0)):
            s.add(BackupObject(backup_id="src", object_id=oid))
    claiming = pg.session()
    claimed = objects.claim_garbage(claiming, STORE)
    assert {n for _, n, _ in claimed} == {"p1", "p2"}
    # The pin waits for the claim's locks, then sees the committed "removing": pins nothing.
    thread, out = _in_thread(lambda: _pin_commit(pg, "b3", "src"))
    _wait_until(lambda: _waiting_for_lock(pg))
    claiming.commit()
    claiming.close()
    thread.join(10)
    assert out.get("value") == 0, out
    with pg.scope() as s:
        s.execute(BackupObject.__table__.delete().where(BackupObject.backup_id == "src"))
    check_consistent(pg)


def _pin_commit(database, backup_id: str, source: str) -> int:
    with database.scope() as s:
        return objects.pin(s, backup_id, source)


@pytest.mark.slow
def test_pg_random_pins_releases_and_claims_never_lose_a_referenced_object(pg):
    """Four threads: backups that pin the newest backup and complete, deletes of random
    backups, and two collectors; afterwards no referenced object was ever claimed."""
    rng = random.Random(7)
    complete(pg, "b0", ["b0/p"], ["b0/p"])
    live = ["b0"]
    lock = threading.Lock()
    freed: set[str] = set()
    errors: list[BaseException] = []
    stop = time.monotonic() + 8.0

    def backups():
        n = 1
        while time.monotonic() < stop:
            with lock:
                parent = live[-1] if live else None
            bid = f"b{n}"
            n += 1
            try:
                with pg.scope() as s:
                    pinned = objects.pin(s, bid, parent) if parent else 0
                    names = [name for (name,) in s.execute(
                        select(StoredObject.name).join(
                            BackupObject, BackupObject.object_id == StoredObject.id)
                        .where(BackupObject.backup_id == bid))] if pinned else []
                reuse = [x for x in names if rng.random() < 0.7]
                complete(pg, bid, [f"{bid}/p"], [*reuse, f"{bid}/p"])
                with lock:
                    live.append(bid)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    def deletes():
        while time.monotonic() < stop:
            with lock:
                victim = live.pop(rng.randrange(len(live))) if len(live) > 2 else None
            if victim:
                with pg.scope() as s:
                    objects.release(s, victim, now=utcnow())
            time.sleep(0.01)

    def collector():
        while time.monotonic() < stop:
            with pg.scope() as s:
                claimed = objects.claim_garbage(s, STORE)
            with pg.scope() as s:
                objects.forget(s, [oid for oid, _, _ in claimed])
            with lock:
                freed.update(name for _, name, _ in claimed)
            time.sleep(0.005)

    threads = [threading.Thread(target=f) for f in (backups, deletes, collector, collector)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    with pg.scope(write=False) as s:
        referenced = set(s.scalars(select(StoredObject.name).join(
            BackupObject, BackupObject.object_id == StoredObject.id)))
    assert referenced, "the run referenced nothing: it tested nothing"
    assert not referenced & freed, sorted(referenced & freed)[:5]
    assert len(freed) > 3, "no collection freed anything: it tested nothing"
    check_consistent(pg)
