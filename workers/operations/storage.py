"""Run half of ``store_gc``: free what no backup references, in small transactions.

Phase 1 frees objects SQL knows with no reference left: claim a batch
(``live`` → ``removing``, committed), delete it from the store, forget the rows.
Phase 2 (scope ``full``) lists the store and frees objects no row knows, when
``orchestrator.storage`` says their backup's prefix may be swept (the key records
under ``_project_keys/`` are no backup's and never swept): each is
claimed by inserting a ``removing`` row first, so an import adopting the same
object at that moment either wins (the claim skips it) or fails.

A crash anywhere leaves only ``removing`` rows or unclaimed garbage, which the
next collection frees; no transaction is held while the store is called.
"""
from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict

from orchestrator import keys
from orchestrator import storage
from orchestrator.db import utcnow
from orchestrator.operations.storage import StoreGCOutcome
from orchestrator.operations.storage import StoreGCParams
from orchestrator.persistence import objects
from workers.faults import crash_point
from workers.jobrun import JobCancelled
from workers.jobrun import JobRun
from workers.node import backup_driver
from workers.node import store_identity
from workers.operations.base import RunHalf
from workers.operations.base import runs

MANIFEST = "manifest.json"
# The reserved prefix of the projects' key records (workers/keyrecords.py): no backup's
# prefix, never swept, never freed by a delete.
KEY_RECORDS = keys.KEY_RECORD_ROOT + "/"


def backup_id_of(name: str) -> str | None:
    """The backup whose prefix holds object ``name`` (``…/backup_<id>/<object>``)."""
    parts = name.split("/")
    if len(parts) >= 2 and parts[-2].startswith("backup_") and len(parts[-2]) > 7:
        return parts[-2][len("backup_"):]
    return None


def free_claimed(settings, db, claimed: list[tuple[int, str, int]]) -> tuple[int, int]:
    """Delete claimed objects from the store, then their rows; (objects, bytes)."""
    if not claimed:
        return 0, 0
    crash_point(settings, "gc:claimed")
    backup_driver(settings).delete_objects([name for _, name, _ in claimed])
    crash_point(settings, "gc:deleted")
    with db.scope() as session:
        objects.forget(session, [oid for oid, _, _ in claimed])
    return len(claimed), sum(size for _, _, size in claimed)


def free_unknown(settings, db, store: str, entries: list[objects.ObjectInfo]
                 ) -> tuple[int, int]:
    """Claim and free objects no row knows (the caller decided they are garbage)."""
    freed = freed_bytes = 0
    for start in range(0, len(entries), 500):
        with db.scope() as session:
            claimed = objects.claim_unknown(session, store, entries[start:start + 500],
                                            now=utcnow())
        count, size = free_claimed(settings, db, claimed)
        freed, freed_bytes = freed + count, freed_bytes + size
    return freed, freed_bytes


def free_own_leftovers(settings, db, driver, store: str, prefix: str) -> None:
    """After a shared-format backup's manifest is gone: free what no row knows under its own
    prefix (an interrupted attempt's objects) and its interrupted puts. Nothing writes
    under a deleting backup's prefix."""
    listing = driver.list_objects(prefix)
    with db.scope(write=False) as session:
        known = objects.known_names(session, store, [e[0] for e in listing])
    free_unknown(settings, db, store, [objects.ObjectInfo(name, size, "")
                                       for name, size, _ in listing if name not in known])
    driver.store.purge_incomplete(prefix)


def free_released(settings, db, store: str, check=lambda: None) -> tuple[int, int]:
    """Free every known object of ``store`` that nothing references, a batch at a time;
    ``check`` runs before each batch (it raises to stop). Returns (objects, bytes)."""
    freed = freed_bytes = 0
    after = 0
    while True:
        check()
        with db.scope() as session:
            claimed = objects.claim_garbage(session, store, after_id=after)
        if not claimed:
            return freed, freed_bytes
        count, size = free_claimed(settings, db, claimed)
        freed, freed_bytes = freed + count, freed_bytes + size
        after = claimed[-1][0]


@runs
class StoreGCRun(RunHalf):
    operation = "store_gc"

    def run(self, run: JobRun, params: StoreGCParams) -> StoreGCOutcome:
        started = time.monotonic()
        store = store_identity(run.settings)
        if params.store and params.store != store:
            raise RuntimeError(f"this host's store is {store}, not {params.store}: "
                               "start the collection on a host of that store")
        freed, freed_bytes = free_released(run.settings, run.db, store,
                                           lambda: self._check(run))
        outcome = dict(objects_freed=freed, bytes_freed=freed_bytes)
        if params.scope == "full":
            outcome.update(self._sweep(run, store))
            outcome["objects_freed"] += outcome["unknown_objects_freed"]
            outcome["bytes_freed"] += outcome["unknown_bytes_freed"]
        return StoreGCOutcome(store=store, scope=params.scope,
                              elapsed_s=round(time.monotonic() - started, 3), **outcome)

    @staticmethod
    def _check(run: JobRun) -> None:
        if run.cancelled():
            raise JobCancelled("garbage collection cancelled")

    def _sweep(self, run: JobRun, store: str) -> dict:
        """Free the objects no row knows whose prefix may be swept (see orchestrator.storage)."""
        driver = backup_driver(run.settings)
        with run.db.scope(write=False) as session:
            cutoff = storage.sweep_cutoff(session, run.settings, now=utcnow())
        cutoff_epoch = cutoff.replace(tzinfo=dt.UTC).timestamp()
        listing = driver.list_objects("")
        unknown_by_backup: dict[str, list] = defaultdict(list)
        skipped = 0
        for start in range(0, len(listing), 1000):
            self._check(run)
            chunk = listing[start:start + 1000]
            with run.db.scope(write=False) as session:
                known = objects.known_names(session, store, [e[0] for e in chunk])
            for name, size, mtime in chunk:
                if name in known:
                    continue
                if name.startswith(KEY_RECORDS):
                    continue         # the projects' key records: never garbage
                backup_id = backup_id_of(name)
                if backup_id is None or mtime >= cutoff_epoch:
                    skipped += 1
                    continue
                unknown_by_backup[backup_id].append((name, size))
        with run.db.scope(write=False) as session:
            verdicts = storage.prefix_verdicts(session, unknown_by_backup)
        garbage = []
        for backup_id, entries in unknown_by_backup.items():
            verdict = verdicts[backup_id]
            if verdict.collectable:  # no job on it: its interrupted puts are garbage too
                driver.store.purge_incomplete(entries[0][0].rsplit("/", 1)[0] + "/")
            for name, size in entries:
                is_manifest = name.rsplit("/", 1)[-1] == MANIFEST
                if verdict.collectable and (verdict.manifest_collectable or not is_manifest):
                    garbage.append(objects.ObjectInfo(name, size, ""))
                else:
                    skipped += 1
        self._check(run)
        crash_point(run.settings, "gc:sweep")
        freed, freed_bytes = free_unknown(run.settings, run.db, store, garbage)
        return dict(unknown_objects_freed=freed, unknown_bytes_freed=freed_bytes,
                    objects_skipped=skipped, objects_listed=len(listing))
