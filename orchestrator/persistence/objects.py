"""Reference counts of shared backup objects: pin, register, release, collect.

A backup of the shared-block format references objects of the store (packs and
index objects) that earlier backups of its volume may have written. SQL is the
source of truth for who references what: one ``store_objects`` row per object,
its ``ref_count`` the number of ``backup_objects`` rows naming it. The protocol
that keeps a garbage collector from ever deleting a referenced object:

* **Pin before use.** An incremental adds a reference to every object its parent
  references (``pin``) in the claim's transaction, before the data path reads
  the parent. The pin is one ``UPDATE … SET ref_count = ref_count + 1 WHERE
  state = 'live'``: an object a collector has already claimed is not pinned,
  and the data path never references an object that is not pinned
  (``register`` refuses such a result, so the backup fails instead).
* **Claim before delete.** A collector moves an object from ``live`` to
  ``removing`` with one ``UPDATE … WHERE ref_count = 0 AND state = 'live'``,
  commits, and only then deletes it from the store. Both statements test the
  row they change, so on PostgreSQL the second to come re-evaluates its
  condition against the first's committed row (and SQLite runs writers one at
  a time): a pin and a claim of the same object can never both succeed.
  ``removing`` is final: the row goes once the object is gone. A crash between
  claim and delete leaves a ``removing`` row that the next collection deletes
  again (deleting a missing object is not an error).
* **Release after the manifest is gone.** Deleting a backup first removes its
  manifest from the store, then (``release``) drops its references; an
  interrupted delete leaves references too many, never too few.

Rows are locked in id order (``ORDER BY id FOR UPDATE``) by every multi-row
change, so two of them cannot deadlock; a collector skips rows another
transaction holds (``SKIP LOCKED``) rather than wait, so it never stalls a
backup.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from orchestrator.models import BackupObject
from orchestrator.models import StoredObject

LIVE = "live"
REMOVING = "removing"
_BATCH = 500


@dataclass(frozen=True)
class ObjectInfo:
    """An object as the data path reports it."""

    name: str
    size: int
    sha256: str | None     # None: recorded without one (a pack; stored as "")


class UnpinnedReference(Exception):
    """A backup's result references an object it neither wrote nor pinned."""


def _chunks(items: Sequence, size: int = _BATCH):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _lock(session: Session, ids: Iterable[int]) -> None:
    """Lock rows ``ids`` in id order (PostgreSQL; SQLite serialises writers already)."""
    ordered = sorted(set(ids))
    for chunk in _chunks(ordered):
        session.execute(select(StoredObject.id).where(StoredObject.id.in_(chunk))
                        .order_by(StoredObject.id).with_for_update())


def referenced_ids(session: Session, backup_id: str) -> list[int]:
    """Ids of the objects ``backup_id`` references, in id order."""
    return list(session.scalars(select(BackupObject.object_id)
                                .where(BackupObject.backup_id == backup_id)
                                .order_by(BackupObject.object_id)))


def pin(session: Session, backup_id: str, source_backup_id: str) -> int:
    """Reference from ``backup_id`` every live object ``source_backup_id`` references.

    Idempotent (an object already referenced is not counted twice). Returns the
    number of objects newly pinned.
    """
    have = set(referenced_ids(session, backup_id))
    wanted = [i for i in referenced_ids(session, source_backup_id) if i not in have]
    pinned: list[int] = []
    _lock(session, wanted)
    for chunk in _chunks(wanted):
        pinned.extend(session.scalars(
            update(StoredObject).where(StoredObject.id.in_(chunk), StoredObject.state == LIVE)
            .values(ref_count=StoredObject.ref_count + 1, released_at=None)
            .returning(StoredObject.id)))
    _add_refs(session, backup_id, pinned)
    return len(pinned)


def _add_refs(session: Session, backup_id: str, ids: Iterable[int]) -> None:
    rows = [{"backup_id": backup_id, "object_id": i} for i in ids]
    for chunk in _chunks(rows):
        session.execute(insert(BackupObject), chunk)


def adopt(session: Session, backup_id: str, store: str, objects: Sequence[ObjectInfo], *,
          now: dt.datetime) -> None:
    """Reference ``objects`` from ``backup_id``: a row is made for an object SQL does not
    know yet, a live row gains a reference; one already referenced is left as it is.

    :raise UnpinnedReference: if one of them is being removed by a collector.
    """
    by_name = {o.name: o for o in objects}
    rows = known_names(session, store, by_name)
    for chunk in _chunks([o for name, o in sorted(by_name.items()) if name not in rows]):
        session.execute(insert(StoredObject), [
            {"store": store, "name": o.name, "size": o.size, "sha256": o.sha256 or "",
             "ref_count": 0, "state": LIVE, "created_at": now} for o in chunk])
    rows = known_names(session, store, by_name)
    removing = sorted(name for name, (_, state) in rows.items() if state != LIVE)
    if removing:
        raise UnpinnedReference(f"object {removing[0]!r} is being removed by a garbage "
                                "collection")
    held = set(referenced_ids(session, backup_id))
    to_add = sorted(oid for oid, _ in rows.values() if oid not in held)
    _lock(session, to_add)
    for chunk in _chunks(to_add):
        added = session.execute(update(StoredObject).where(StoredObject.id.in_(chunk),
                                                           StoredObject.state == LIVE)
                                .values(ref_count=StoredObject.ref_count + 1,
                                        released_at=None)).rowcount
        if added != len(chunk):
            raise UnpinnedReference("an object was claimed by a garbage collection meanwhile")
    _add_refs(session, backup_id, to_add)


def register(session: Session, backup_id: str, store: str, *, new: Sequence[ObjectInfo],
             referenced: Sequence[str], now: dt.datetime) -> None:
    """Record a completed backup's references: the objects it wrote (``new``) and every
    object its manifest references (``referenced``, names); pins it does not use are
    released.

    :raise UnpinnedReference: if a referenced object is neither new nor pinned.
    """
    new_names = {o.name for o in new}
    held = referenced_names(session, backup_id)
    unpinned = sorted(name for name in set(referenced) - new_names if name not in held)
    if unpinned:
        raise UnpinnedReference(
            f"backup {backup_id} references {len(unpinned)} object(s) it did not pin, "
            f"first {unpinned[0]!r}")
    adopt(session, backup_id, store, new, now=now)
    wanted = set(referenced) | new_names
    _drop_refs(session, backup_id, [oid for name, oid in held.items() if name not in wanted],
               now)


def referenced_names(session: Session, backup_id: str) -> dict[str, int]:
    """The objects ``backup_id`` references: name → id."""
    return dict(session.execute(
        select(StoredObject.name, StoredObject.id).join(
            BackupObject, BackupObject.object_id == StoredObject.id)
        .where(BackupObject.backup_id == backup_id)).all())


def drop(session: Session, backup_id: str, ids: Sequence[int], *, now: dt.datetime) -> None:
    """Drop the references of ``backup_id`` to objects ``ids``."""
    _drop_refs(session, backup_id, ids, now)


def release(session: Session, backup_id: str, *, now: dt.datetime) -> int:
    """Drop every reference of ``backup_id``; returns how many objects it referenced."""
    ids = referenced_ids(session, backup_id)
    _drop_refs(session, backup_id, ids, now)
    return len(ids)


def _drop_refs(session: Session, backup_id: str, ids: Sequence[int], now: dt.datetime) -> None:
    ids = sorted(ids)
    _lock(session, ids)
    for chunk in _chunks(ids):
        session.execute(delete(BackupObject).where(BackupObject.backup_id == backup_id,
                                                   BackupObject.object_id.in_(chunk)))
        session.execute(update(StoredObject).where(StoredObject.id.in_(chunk))
                        .values(ref_count=StoredObject.ref_count - 1))
        session.execute(update(StoredObject).where(StoredObject.id.in_(chunk),
                                                   StoredObject.ref_count == 0)
                        .values(released_at=now))


def claim_garbage(session: Session, store: str, *, limit: int = _BATCH,
                  after_id: int = 0) -> list[tuple[int, str, int]]:
    """Claim up to ``limit`` unreferenced objects of ``store`` for deletion: (id, name, size).

    Objects already ``removing`` (a collection that crashed after claiming them)
    are returned again. Rows another transaction holds are skipped, not waited for.
    """
    candidates = list(session.scalars(
        select(StoredObject.id).where(StoredObject.store == store, StoredObject.ref_count == 0,
                                      StoredObject.id > after_id)
        .order_by(StoredObject.id).limit(limit).with_for_update(skip_locked=True)))
    if not candidates:
        return []
    session.execute(update(StoredObject).where(StoredObject.id.in_(candidates),
                                               StoredObject.ref_count == 0,
                                               StoredObject.state == LIVE)
                    .values(state=REMOVING))
    return [tuple(row) for row in session.execute(
        select(StoredObject.id, StoredObject.name, StoredObject.size)
        .where(StoredObject.id.in_(candidates), StoredObject.state == REMOVING)
        .order_by(StoredObject.id))]


def forget(session: Session, ids: Sequence[int]) -> None:
    """Delete the rows of claimed objects that are gone from the store."""
    for chunk in _chunks(sorted(ids)):
        session.execute(delete(StoredObject).where(StoredObject.id.in_(chunk),
                                                   StoredObject.state == REMOVING))


def known_names(session: Session, store: str, names: Iterable[str]
                ) -> dict[str, tuple[int, str]]:
    """Which of ``names`` have a row in ``store`` (whatever their state): name → (id,
    state)."""
    rows: dict[str, tuple[int, str]] = {}
    for chunk in _chunks(sorted(set(names))):
        for oid, name, state in session.execute(
                select(StoredObject.id, StoredObject.name, StoredObject.state)
                .where(StoredObject.store == store, StoredObject.name.in_(chunk))):
            rows[name] = (oid, state)
    return rows


def stores(session: Session) -> list[str]:
    """Every store some object row belongs to."""
    return list(session.scalars(select(StoredObject.store).distinct()))


def garbage_count(session: Session, store: str) -> tuple[int, int]:
    """(objects, bytes) of ``store`` that no backup references."""
    count, size = session.execute(select(func.count(), func.coalesce(func.sum(
        StoredObject.size), 0)).where(StoredObject.store == store,
                                      StoredObject.ref_count == 0)).one()
    return int(count), int(size)


def claim_unknown(session: Session, store: str, entries: Sequence[ObjectInfo], *,
                  now: dt.datetime) -> list[tuple[int, str, int]]:
    """Claim objects that no row knows, for deletion: a ``removing`` row is made for each,
    unless a row appeared meanwhile (an import adopting it). Returns (id, name, size) of
    those claimed; the caller deletes them, then calls ``forget``."""
    if not entries:
        return []
    dialect_insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" \
        else sqlite.insert
    claimed: list[tuple[int, str, int]] = []
    for chunk in _chunks(list(entries)):
        statement = dialect_insert(StoredObject).values([
            {"store": store, "name": o.name, "size": o.size, "sha256": o.sha256 or "",
             "ref_count": 0, "state": REMOVING, "created_at": now} for o in chunk])
        statement = statement.on_conflict_do_nothing(index_elements=["store", "name"])
        claimed.extend(tuple(row) for row in session.execute(
            statement.returning(StoredObject.id, StoredObject.name, StoredObject.size)))
    return claimed
