"""A model of shared-block chains (hypothesis stateful): random full and incremental
backups of a changing volume, deletes of any backup, restores and collections, on real
files, the POSIX store, the data path and the SQL reference counts (SQLite), following
the protocol the jobs follow: pin the parent, back up, register; delete the manifest,
release; claim, delete, forget.

After every step every live backup restores byte-identical to the volume as it was when
it was taken, and every object a live backup references is in the store; after a
collection the store holds nothing that no live backup references.
"""
from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import invariant
from hypothesis.stateful import precondition
from hypothesis.stateful import rule
from sqlalchemy import select

from orchestrator import db as dbmod
from orchestrator.db import utcnow
from orchestrator.migrate import upgrade
from orchestrator.models import StoredObject
from orchestrator.persistence import objects
from workers.datapath import BackupRef
from workers.datapath import ChunkedDriver
from workers.stores import make_store

KiB = 1024
BLOCK = 4 * KiB
VOLUME = 96 * BLOCK
STORE = "posix:model"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SharedChains(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="chains-"))
        self.url = f"sqlite:///{self.dir / 'db.sqlite'}"
        upgrade(self.url)
        self.db = dbmod.get_database(self.url)
        self.store_root = self.dir / "store"
        self.driver = ChunkedDriver(make_store("posix", path=str(self.store_root)),
                                    block_size=BLOCK, segment_size=8 * BLOCK,
                                    pack_size=6 * BLOCK, max_chain_depth=5, threads=2,
                                    io_threads=2, fsync_target=False)
        self.volume = self.dir / "volume"
        self.volume.write_bytes(b"")
        os.truncate(self.volume, VOLUME)
        self.backups: dict[str, tuple[BackupRef, str]] = {}   # id -> (ref, digest)
        self.order: list[str] = []
        self.counter = 0

    def teardown(self):
        dbmod._databases.pop(self.url, None)
        self.db.dispose()

    # ------------------------------------------------------------------ the volume

    @rule(block=st.integers(0, VOLUME // BLOCK - 1), count=st.integers(1, 12),
          seed=st.integers(0, 2**32 - 1), zero=st.booleans())
    def write(self, block, count, seed, zero):
        start = block * BLOCK + (seed % 7) * 512
        length = min(count * BLOCK - (seed % 3) * 100, VOLUME - start)
        data = bytes(length) if zero else random.Random(seed).randbytes(length)
        with open(self.volume, "r+b") as f:
            f.seek(start)
            f.write(data)

    # ------------------------------------------------------------------ backups

    @rule(incremental=st.booleans())
    def backup(self, incremental):
        self.counter += 1
        backup_id = f"bk{self.counter:04d}"
        parent_id = self.order[-1] if incremental and self.order else None
        with self.db.scope() as s:
            if parent_id:
                objects.pin(s, backup_id, parent_id)
        parent = self.backups[parent_id][0] if parent_id else None
        result = self.driver.backup(str(self.volume), backup_id=backup_id, volume_id="vol",
                                    size_bytes=VOLUME, parent=parent)
        with self.db.scope() as s:
            objects.register(s, backup_id, STORE,
                             new=[objects.ObjectInfo(o.name, o.size, o.sha256)
                                  for o in result.new_objects],
                             referenced=[o.name for o in result.referenced_objects],
                             now=utcnow())
        self.backups[backup_id] = (result.ref, _digest(self.volume))
        self.order.append(backup_id)

    @precondition(lambda self: self.order)
    @rule(data=st.data())
    def delete(self, data):
        backup_id = data.draw(st.sampled_from(self.order))
        ref, _ = self.backups.pop(backup_id)
        self.order.remove(backup_id)
        self.driver.delete_manifest(ref)
        with self.db.scope() as s:
            objects.release(s, backup_id, now=utcnow())

    @precondition(lambda self: self.order)
    @rule(data=st.data())
    def restore(self, data):
        backup_id = data.draw(st.sampled_from(self.order))
        self._check_restore(backup_id)

    @rule()
    def collect(self):
        while True:
            with self.db.scope() as s:
                claimed = objects.claim_garbage(s, STORE)
            if not claimed:
                break
            self.driver.delete_objects([name for _, name, _ in claimed])
            with self.db.scope() as s:
                objects.forget(s, [oid for oid, _, _ in claimed])
        extra = self._stored() - self._referenced() - self._manifests()
        assert not extra, sorted(extra)[:5]

    # ------------------------------------------------------------------ checks

    def _check_restore(self, backup_id):
        ref, digest = self.backups[backup_id]
        target = self.dir / "restored"
        target.unlink(missing_ok=True)
        self.driver.restore(ref, str(target))
        assert _digest(target) == digest, backup_id

    def _stored(self) -> set[str]:
        return {name for name, _, _ in self.driver.list_objects("")}

    def _referenced(self) -> set[str]:
        with self.db.scope(write=False) as s:
            return set(s.scalars(select(StoredObject.name).where(StoredObject.ref_count > 0)))

    def _manifests(self) -> set[str]:
        return {f"{ref.container}/{ref.prefix}/manifest.json"
                for ref, _ in self.backups.values()}

    @invariant()
    def every_live_backup_restores_and_its_objects_exist(self):
        missing = self._referenced() - self._stored()
        assert not missing, sorted(missing)[:5]
        for backup_id in self.order:
            self._check_restore(backup_id)


SharedChains.TestCase.settings = hsettings(
    max_examples=int(os.environ.get("ORCH_TEST_MODEL_EXAMPLES", "25")), stateful_step_count=25,
    deadline=None, suppress_health_check=[HealthCheck.too_slow])
test_shared_chains = pytest.mark.timeout(900)(SharedChains.TestCase)
