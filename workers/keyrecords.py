"""Key records: a copy of each project's wrapped keys in the store, for rebuilding SQL.

    python -m workers.keyrecords write [--project P]   write the records from SQL
    python -m workers.keyrecords restore [--dry-run]   put lost project_keys rows back

SQL (``project_keys``) is the source of truth for a project's keys; the store holds a
copy, ``_project_keys/project_<project>/keyring.json`` (docs/format.md, "Key records"):
checksummed JSON with the project's wrapped data keys and identity key — never a plain
key — sealed as a whole under the key encryption key (KEK), so a record edited (a key
removed or added, a retired key made current, moved to another project's name) or
written under another KEK is refused. A backup writes its project's record before its
data path runs (so no backup completes with a key the store does not hold), an import
before it completes; writes are atomic puts, idempotent (nothing is written when the
record already says it all) and merge what the record holds, so a key is never dropped
from it. After a database loss, ``restore`` (also the first step of
``orchestrator storage rebuild-refs``) adds every key a record holds that SQL lacks.

The garbage collector never frees anything under the reserved prefix (it is no backup's
prefix) and no backup container may lie there (orchestrator.api.validate_container).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import re
import sys

from sqlalchemy import select

from orchestrator import keys
from orchestrator.config import Settings
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.models import ProjectKey
from workers.datapath.errors import IntegrityError
from workers.datapath.errors import NotFound
from workers.datapath.format import decode_manifest
from workers.datapath.format import encode_manifest
from workers.node import backup_driver

log = logging.getLogger(__name__)

FORMAT = "orchestrator.key-record"
VERSION = 1
RECORD = "keyring.json"
ROOT = keys.KEY_RECORD_ROOT
# The seal's "key id" and purpose in the wrapping's associated data: nothing else uses them.
SEAL_ID = SEAL_PURPOSE = "key-record"
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}\Z")
_WRITE_ATTEMPTS = 5


class KeyRecordError(keys.KeyError_):
    """A key record that cannot be trusted: damaged, edited, or of another KEK."""


def record_name(project_id: str) -> str:
    """The store name of ``project_id``'s key record (a project id that is not a safe
    name component is named by its SHA-256)."""
    part = project_id if _SAFE.fullmatch(project_id) else \
        "sha256-" + hashlib.sha256(project_id.encode()).hexdigest()
    return f"{ROOT}/project_{part}/{RECORD}"


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _entry(row: ProjectKey) -> dict:
    return {"key_id": row.key_id, "purpose": row.purpose, "wrapped": row.wrapped,
            "created_at": _time(row.created_at), "retired_at": _time(row.retired_at)}


def _body(project_id: str, kek_id: str, entries: list[dict]) -> dict:
    return {"format": FORMAT, "version": VERSION, "project_id": project_id, "kek_id": kek_id,
            "keys": sorted(entries, key=lambda e: (e["created_at"] or "", e["key_id"]))}


def _digest(body: dict) -> bytes:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).digest()


def encode_record(provider: keys.KekProvider, project_id: str, rows: list[ProjectKey]
                  ) -> bytes:
    """The bytes of ``project_id``'s key record holding ``rows`` (wrapped keys only, each
    wrapped by ``provider``'s KEK), sealed under that KEK.

    :raise KeyRecordError: if a row is another project's or wrapped by another KEK.
    """
    for row in rows:
        if row.project_id != project_id or row.kek_id != provider.kek_id:
            raise KeyRecordError(f"key {row.key_id} is not a key of project {project_id} "
                                 "wrapped by this key encryption key")
    body = _body(project_id, provider.kek_id, [_entry(r) for r in rows])
    seal = provider.wrap(_digest(body), project_id=project_id, key_id=SEAL_ID,
                         purpose=SEAL_PURPOSE)
    return encode_manifest({**body, "seal": seal})


def decode_record(provider: keys.KekProvider, raw: bytes, name: str) -> list[ProjectKey]:
    """The wrapped keys (unsaved rows) of the key record ``raw`` stored as ``name``,
    after checking its checksum, its seal under this deployment's KEK, that it is stored
    under its project's name and that every key unwraps.

    :raise KeyRecordError: naming the record and what is wrong.
    """
    try:
        body = decode_manifest(raw, name)
    except IntegrityError as exc:
        raise KeyRecordError(f"key record {name} is damaged: {exc}") from None
    if body.get("format") != FORMAT or body.get("version") != VERSION:
        raise KeyRecordError(f"{name} is not a version-{VERSION} key record")
    project_id, kek_id = body.get("project_id"), body.get("kek_id")
    entries, seal = body.get("keys"), body.get("seal")
    if not isinstance(project_id, str) or not isinstance(entries, list) or \
            not isinstance(seal, str):
        raise KeyRecordError(f"key record {name} is malformed")
    if record_name(project_id) != name:
        raise KeyRecordError(f"key record {name} names project {project_id}, whose record "
                             f"is {record_name(project_id)}: refused")
    if kek_id != provider.kek_id:
        raise KeyRecordError(f"key record {name} was written under key encryption key "
                             f"{kek_id}, not this deployment's ({provider.kek_id}): refused")
    unsealed = {k: v for k, v in body.items() if k != "seal"}
    try:
        sealed_digest = provider.unwrap(seal, project_id=project_id, key_id=SEAL_ID,
                                        purpose=SEAL_PURPOSE)
    except keys.KeyError_:
        sealed_digest = b""
    if sealed_digest != _digest(unsealed):
        raise KeyRecordError(f"key record {name} of project {project_id} does not match "
                             "its seal (edited or damaged): refused")
    rows = []
    try:
        for e in entries:
            rows.append(ProjectKey(
                key_id=str(e["key_id"]), project_id=project_id, purpose=str(e["purpose"]),
                wrapped=str(e["wrapped"]), kek_id=kek_id,
                created_at=dt.datetime.fromisoformat(e["created_at"]),
                retired_at=dt.datetime.fromisoformat(e["retired_at"])
                if e.get("retired_at") else None))
    except (KeyError, TypeError, ValueError):
        raise KeyRecordError(f"key record {name} holds a malformed key") from None
    for row in rows:           # sealed, so these unwrap; checked all the same
        if row.purpose not in (keys.DATA, keys.IDENTITY):
            raise KeyRecordError(f"key record {name} holds a key of purpose {row.purpose!r}")
        provider.unwrap(row.wrapped, project_id=project_id, key_id=row.key_id,
                        purpose=row.purpose)
    return rows


def merged(held: list[ProjectKey], stored: list[ProjectKey]) -> list[ProjectKey]:
    """The keys a record should hold: SQL's (``held``) and every key the stored record
    has that SQL does not (a record never loses a key). A key retired in either is
    retired; a stored current key is retired when SQL has a current key of its purpose."""
    by_id = {r.key_id: r for r in stored}
    current = {r.purpose for r in held if r.retired_at is None}
    out = []
    for row in held:
        old = by_id.get(row.key_id)
        retired = row.retired_at or (old.retired_at if old is not None else None)
        out.append(keys.copied_row(row, retired_at=retired))
    held_ids = {r.key_id for r in held}
    for row in stored:
        if row.key_id in held_ids:
            continue
        retired = row.retired_at or (row.created_at if row.purpose in current else None)
        if retired is None:
            current.add(row.purpose)
        out.append(keys.copied_row(row, retired_at=retired))
    return out


def _same(a: list[ProjectKey], b: list[ProjectKey]) -> bool:
    def canon(rows):
        return sorted((e["key_id"], e["purpose"], e["wrapped"], e["retired_at"] is None)
                      for e in map(_entry, rows))
    return canon(a) == canon(b)


def read_record(store, provider: keys.KekProvider, project_id: str
                ) -> list[ProjectKey] | None:
    """The keys of ``project_id``'s record in ``store``; None if there is none.

    :raise KeyRecordError: if there is one that cannot be trusted.
    """
    name = record_name(project_id)
    try:
        raw = store.get(name)
    except NotFound:
        return None
    return decode_record(provider, raw, name)


def write_record(store, provider: keys.KekProvider, project_id: str,
                 rows: list[ProjectKey]) -> bool:
    """Make ``project_id``'s record in ``store`` hold ``rows`` (the project's keys in SQL,
    plus any about to be registered) and whatever it held; whether it was written.

    Idempotent; an atomic put; re-read until the record holds the rows (a concurrent
    writer of the same project may have put a record without them). A stored record
    that cannot be trusted is replaced (SQL is the truth), with a warning.

    :raise KeyRecordError: if a row is not this project's or not wrapped by this KEK.
    :raise StoreError: if the store fails.
    """
    name = record_name(project_id)
    wrote = False
    for _ in range(_WRITE_ATTEMPTS):
        try:
            stored = read_record(store, provider, project_id)
        except KeyRecordError as exc:
            log.warning("replacing the key record %s from SQL: %s", name, exc)
            stored = None
        want = merged(rows, stored or [])
        if stored is not None and _same(stored, want):
            return wrote
        store.put(name, encode_record(provider, project_id, want))
        wrote = True
    log.warning("key record %s still changing after %d writes", name, _WRITE_ATTEMPTS)
    return wrote


def store_of(settings: Settings):
    """This node's raw (not encrypting) store: records are sealed by the KEK themselves."""
    return backup_driver(settings).store


def ensure_record(settings: Settings, db, project_id: str,
                  extra: list[ProjectKey] = (), *,
                  rows: list[ProjectKey] | None = None) -> bool:
    """Write ``project_id``'s record from its keys in SQL (``rows`` when the caller has
    just read them, plus ``extra`` rows) to this node's store; whether it was written."""
    if rows is None:
        with db.scope(write=False) as session:
            rows = keys.project_rows(session, project_id)
    rows = list(rows)
    held = {r.key_id for r in rows}
    rows += [r for r in extra if r.key_id not in held]
    if not rows:
        return False
    return write_record(store_of(settings), keys.kek_provider(settings), project_id, rows)


def restore(settings: Settings, *, dry_run: bool = False) -> dict:
    """Add to project_keys every key a trusted record of this node's store holds and SQL
    lacks (a record's current key stays current unless SQL has a current key of its
    purpose). A record that cannot be trusted adds nothing and is reported."""
    db = get_database(settings.database_url)
    store = store_of(settings)
    report = {"key_records": 0, "keys_restored": 0, "problems": []}
    try:
        provider = keys.kek_provider(settings)
    except keys.KeyError_ as exc:
        report["problems"].append(f"key records: {exc}")
        return report
    names = [n for n in store.list(ROOT + "/") if n.endswith("/" + RECORD)]
    for name in names:
        report["key_records"] += 1
        try:
            stored = decode_record(provider, store.get(name), name)
        except NotFound:
            continue
        except keys.KeyError_ as exc:
            report["problems"].append(str(exc))
            continue
        if not stored:
            continue
        project_id = stored[0].project_id
        with db.scope() as session:
            held = keys.project_rows(session, project_id)
            ids = {r.key_id for r in held}
            current = {r.purpose for r in held if r.retired_at is None}
            now = utcnow()
            for row in stored:
                if row.key_id in ids:
                    continue
                retired = row.retired_at or (now if row.purpose in current else None)
                if retired is None:
                    current.add(row.purpose)
                session.add(keys.copied_row(row, project_id=project_id,
                                            retired_at=retired))
                report["keys_restored"] += 1
            if dry_run:
                session.rollback()
    return report


def write_all(settings: Settings, project_id: str | None = None) -> dict:
    """Write the record of every project with keys in SQL (or of one) to this node's
    store: after ``orchestrator keys rewrap`` or ``rotate``, so the store's copy is
    current before the next backup would make it so."""
    db = get_database(settings.database_url)
    with db.scope(write=False) as session:
        projects = [project_id] if project_id else list(session.scalars(
            select(ProjectKey.project_id).distinct().order_by(ProjectKey.project_id)))
    report = {"projects": 0, "records_written": 0, "problems": []}
    for project in projects:
        report["projects"] += 1
        try:
            report["records_written"] += ensure_record(settings, db, project)
        except keys.KeyError_ as exc:
            report["problems"].append(f"project {project}: {exc}")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workers.keyrecords",
                                 description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write the projects' key records from SQL")
    w.add_argument("--project", default=None, help="only this project")
    r = sub.add_parser("restore", help="add the keys the records hold and SQL lacks")
    r.add_argument("--dry-run", action="store_true", help="report, change nothing")
    args = ap.parse_args(argv)
    settings = Settings.load("workers.keyrecords")
    report = write_all(settings, args.project) if args.command == "write" else \
        restore(settings, dry_run=args.dry_run)
    print(json.dumps(report))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
