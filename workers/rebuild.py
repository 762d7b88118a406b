"""Rebuild the reference counts of shared objects from the store alone.

    python -m workers.rebuild [--dry-run]      (also: orchestrator storage rebuild-refs)

First the projects' keys: every key a trusted key record of the store holds and
project_keys lacks is put back (workers/keyrecords.py; a record that is damaged,
edited or of another KEK is reported and adds nothing). Then, for every backup of
this host's store that SQL lists as available (or being restored), its manifest
and index objects are read from the store and its references set to exactly what
they name: missing ones are added (a row is made for an object SQL does not
know), extra ones dropped. After a database restored from an older dump, or rows
lost by hand, this makes the keys and counts true again before a collection runs.
Backups still being created keep their pins; a backup whose manifest is missing
or damaged, or that names an object a collection is removing, is reported and
left as it is. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys

from sqlalchemy import select
from sqlalchemy import update

from orchestrator import keys
from orchestrator.config import Settings
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.models import Backup
from orchestrator.persistence import objects
from orchestrator.states import BackupStatus
from workers import keyrecords
from workers.datapath import BackupRef
from workers.datapath import DataPathError
from workers.node import backup_driver
from workers.node import store_identity

STEADY = (BackupStatus.AVAILABLE, BackupStatus.RESTORING)


def rebuild(settings: Settings, *, dry_run: bool = False) -> dict:
    """Set every steady backup's references to what its manifest names; a report."""
    db = get_database(settings.database_url)
    driver = backup_driver(settings)
    store = store_identity(settings)
    # First the keys: an encrypted backup's manifest reads only with its project's keys,
    # and after a database loss the store's key records are where they are.
    restored = keyrecords.restore(settings, dry_run=dry_run)
    report = {"store": store, "key_records": restored["key_records"],
              "keys_restored": restored["keys_restored"], "backups_checked": 0,
              "backups_changed": 0, "references_added": 0, "references_dropped": 0,
              "chain_format": 0, "problems": list(restored["problems"])}
    with db.scope(write=False) as session:
        rows = session.execute(select(Backup.id, Backup.container, Backup.service_metadata,
                                      Backup.project_id, Backup.encryption_key_id)
                               .where(Backup.deleted.is_(False), Backup.status.in_(STEADY),
                                      Backup.service_metadata.is_not(None))
                               .order_by(Backup.created_at)).all()
    rings: dict = {}
    for backup_id, container, prefix, project_id, key_id in rows:
        report["backups_checked"] += 1
        try:
            reader = driver
            if key_id:             # an encrypted backup: read with its project's keys
                if project_id not in rings:
                    with db.scope(write=False) as session:
                        rings[project_id] = keys.project_rows(session, project_id)
                reader = backup_driver(settings, keys.reading_keyring(
                    keys.kek_provider(settings), rings[project_id], key_id))
            stored = reader.referenced_objects(BackupRef(container, prefix))
        except (DataPathError, keys.KeyError_) as exc:
            report["problems"].append(f"backup {backup_id}: {exc}")
            continue
        if stored.format_version != 2:
            report["chain_format"] += 1
            continue
        wanted = {o.name: objects.ObjectInfo(o.name, o.size, o.sha256) for o in stored.objects}
        with db.scope() as session:
            held = objects.referenced_names(session, backup_id)
            add = [info for name, info in wanted.items() if name not in held]
            drop = [name for name in held if name not in wanted]
            if not add and not drop:
                continue
            report["backups_changed"] += 1
            report["references_added"] += len(add)
            report["references_dropped"] += len(drop)
            if dry_run:
                session.rollback()
                continue
            try:
                objects.adopt(session, backup_id, store, add, now=utcnow())
            except objects.UnpinnedReference as exc:
                session.rollback()
                report["problems"].append(f"backup {backup_id}: {exc}")
                continue
            objects.drop(session, backup_id, [held[name] for name in drop], now=utcnow())
            session.execute(update(Backup).where(Backup.id == backup_id)
                            .values(data_format=2))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workers.rebuild",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="report, change nothing")
    args = ap.parse_args(argv)
    report = rebuild(Settings.load("workers.rebuild"), dry_run=args.dry_run)
    print(json.dumps(report))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
