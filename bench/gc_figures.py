#!/usr/bin/env python3
"""The figures of deleting and collecting shared-block backups, on the real data path,
the POSIX store and the SQL reference counts (SQLite), with the functions the jobs use:

* ``delete_middle_s``: deleting the 5th backup of a 10-deep chain of a --size-mib
  volume (1 % of its 32 KiB blocks changed between backups), as the delete job and the
  collection it queues do it: remove the manifest, free unknown leftovers of its prefix,
  drop its references, free what nobody references any more;
* ``gc_s``, ``gc_objects_freed``, ``gc_bytes_freed``: a full collection of a store
  holding 100 backups of a --gc-volume-mib volume after 50 of them (chosen at random,
  middles included) were deleted without collecting.

    bench/gc_figures.py [--size-mib 1024] [--gc-volume-mib 64] [--workdir DIR]

bench/datapath.py calls ``measure`` and adds these keys to its JSON; run alone, the
last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MiB = 1024 * 1024


def _change(path: str, rng: random.Random, fraction: float = 0.01) -> None:
    """Rewrite one 4 KiB page in ``fraction`` of the file's 32 KiB blocks."""
    size = os.path.getsize(path)
    blocks = size // (32 * 1024)
    with open(path, "r+b") as f:
        for block in rng.sample(range(blocks), max(1, int(blocks * fraction))):
            f.seek(block * 32 * 1024 + rng.randrange(8) * 4096)
            f.write(rng.randbytes(4096))


def _fill(path: str, size: int, rng: random.Random) -> None:
    """Half random, half repeated text: compressible like a real volume."""
    with open(path, "wb") as f:
        chunk = 4 * MiB
        for _ in range(size // chunk):
            f.write(rng.randbytes(chunk // 2) + (b"volume backup text " * (chunk // 38))
                    [:chunk // 2])


class Harness:
    """A store, a database and the steps of the jobs, without the job machinery."""

    def __init__(self, work: str, name: str):
        sys.path.insert(0, ROOT)
        from orchestrator.config import Settings
        from orchestrator.db import get_database
        from orchestrator.migrate import upgrade
        from workers.node import backup_driver
        from workers.node import store_identity
        state = os.path.join(work, name)
        self.settings = Settings(state_dir=state, broker_url="memory://",
                                 backup_path=os.path.join(state, "store"))
        upgrade(self.settings.database_url)
        self.db = get_database(self.settings.database_url)
        self.driver = backup_driver(self.settings)
        self.store = store_identity(self.settings)
        self.refs: dict[str, object] = {}

    def backup(self, source: str, backup_id: str, parent: str | None) -> None:
        from orchestrator.db import utcnow
        from orchestrator.persistence import objects
        with self.db.scope() as s:
            if parent:
                objects.pin(s, backup_id, parent)
        result = self.driver.backup(source, backup_id=backup_id, volume_id="vol",
                                    size_bytes=os.path.getsize(source),
                                    parent=self.refs.get(parent))
        with self.db.scope() as s:
            objects.register(s, backup_id, self.store,
                             new=[objects.ObjectInfo(o.name, o.size, o.sha256)
                                  for o in result.new_objects],
                             referenced=[o.name for o in result.referenced_objects],
                             now=utcnow())
        self.refs[backup_id] = result.ref

    def delete(self, backup_id: str) -> None:
        """What the delete job does, less the collection it queues."""
        from orchestrator.db import utcnow
        from orchestrator.persistence import objects
        from workers.datapath.refs import backup_prefix
        from workers.operations.storage import free_own_leftovers
        ref = self.refs.pop(backup_id)
        self.driver.delete_manifest(ref)
        free_own_leftovers(self.settings, self.db, self.driver, self.store, backup_prefix(ref))
        with self.db.scope() as s:
            objects.release(s, backup_id, now=utcnow())

    def collect(self) -> tuple[int, int]:
        from workers.operations.storage import free_released
        freed = free_released(self.settings, self.db, self.store)
        self.driver.list_objects("")       # the sweep lists the whole store
        return freed


def measure(work: str, size_mib: int = 1024, gc_volume_mib: int = 64,
            source: str | None = None) -> dict:
    """The figures (see the module docstring); ``source`` is a --size-mib image to use."""
    rng = random.Random(15)
    out: dict = {}
    # delete of a middle backup of a 10-deep chain
    chain = Harness(work, "gc-chain")
    volume = os.path.join(work, "gc-chain.img")
    if source:
        shutil.copyfile(source, volume)
    else:
        _fill(volume, size_mib * MiB, rng)
    for i in range(10):
        if i:
            _change(volume, rng)
        chain.backup(volume, f"chain{i:02d}", f"chain{i - 1:02d}" if i else None)
    t = time.perf_counter()
    chain.delete("chain05")
    freed, freed_bytes = chain.collect()
    out["delete_middle_s"] = round(time.perf_counter() - t, 3)
    out["delete_middle_objects_freed"] = freed
    os.unlink(volume)
    # a store of 100 backups, half of them deleted, collected at once
    store = Harness(work, "gc-store")
    volume = os.path.join(work, "gc-store.img")
    _fill(volume, gc_volume_mib * MiB, rng)
    previous = None
    for i in range(100):
        if i:
            _change(volume, rng)
        backup_id = f"b{i:03d}"
        store.backup(volume, backup_id, previous)
        previous = backup_id
    for backup_id in rng.sample(sorted(store.refs)[:-1], 50):
        store.delete(backup_id)
    t = time.perf_counter()
    freed, freed_bytes = store.collect()
    out.update(gc_s=round(time.perf_counter() - t, 3), gc_objects_freed=freed,
               gc_bytes_freed=freed_bytes)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--gc-volume-mib", type=int, default=64)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-gc-", dir=a.workdir)
    try:
        print(json.dumps(measure(work, a.size_mib, a.gc_volume_mib)), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
