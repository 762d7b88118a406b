"""Verifying a backup: re-read every object it references, check every digest, write
nothing. Damage is reported (naming the object), never raised: the caller records
the outcome.

Version 2: the root manifest, every index object, every object the index
objects list (even one no extent uses) and every block of every extent. Objects
in the backup's prefix that it does not reference are not its concern: other
backups may reference them, and the garbage collector decides about the rest.

Version 1: *every* block of every frame of every backup of the chain (not only
the live ones), every pack including those no frame uses, and that the store
holds no object the manifests do not list.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .catalog import load_chain
from .catalog import read_manifest
from .config import DriverConfig
from .errors import BackupCancelled
from .errors import IntegrityError
from .errors import InvalidBackup
from .errors import StoreError
from .format import MANIFEST_NAME
from .index import RootManifest
from .progress import CancelledCallback
from .progress import ProgressCallback
from .progress import ProgressTicker
from .refs import BackupRef
from .refs import backup_prefix
from .refs import object_name
from .restore import BlockRun
from .restore import FrameWork
from .restore import PackCounters
from .restore import PackKey
from .restore import PackRunner
from .restore import v1_pack_jobs
from .restore import v2_pack_jobs
from .results import VerifyResult

if TYPE_CHECKING:
    from workers.stores import ObjectStore


def verify(store: ObjectStore, config: DriverConfig, ref: tuple[str, str], *,
           progress: ProgressCallback | None = None,
           cancelled: CancelledCallback | None = None) -> VerifyResult:
    """Check backup ``ref`` and the backups it builds on.

    Never raises for damage: returns ``VerifyResult(ok=False, problems=[...])``.

    :raise BackupCancelled: if ``cancelled()`` said so.
    """
    started = time.monotonic()
    ref = BackupRef(*ref)
    problems: list[str] = []
    try:
        newest = read_manifest(store, ref)
        config = config.reading(newest.body)
        chain = load_chain(store, ref) if newest.format_version == 1 else [newest]
    except (IntegrityError, InvalidBackup, StoreError) as e:
        return VerifyResult(ok=False, objects_checked=0, stored_bytes_checked=0,
                            logical_bytes_checked=0, blocks_checked=0, chain=[ref],
                            problems=[str(e)], elapsed_s=time.monotonic() - started)
    if newest.format_version != 1:
        return _verify_v2(store, config, newest, started, progress, cancelled)
    work: dict[PackKey, list[FrameWork]] = {}
    total = 0
    for chain_index, manifest in enumerate(chain):
        for frame in manifest.frames:
            work.setdefault((chain_index, frame.pack_index), []).append(
                FrameWork(frame, [BlockRun(frame.first_block, frame.block_count)]))
            total += manifest.block_range_bytes(frame.first_block, frame.block_count)
        # Packs without frames still have to exist and match.
        for pack_index in range(len(manifest.objects)):
            work.setdefault((chain_index, pack_index), [])
    ticker = ProgressTicker(total, progress, cancelled, config.check_interval_bytes)
    ticker.report(0, force=True)
    if ticker.should_cancel(0, force=True):
        raise BackupCancelled("verify cancelled")
    counters = PackCounters()
    PackRunner(store, config, v1_pack_jobs(chain, work), ticker, counters, fd=None,
               problems=problems).run()
    ticker.report(total, force=True)
    for manifest in chain:   # every object in the prefix should be known
        try:
            known = {object_name(manifest.ref, o.name) for o in manifest.objects} \
                | {object_name(manifest.ref, MANIFEST_NAME)}
            extra = [n for n in store.list(backup_prefix(manifest.ref)) if n not in known]
            if extra:
                problems.append(f"unexpected objects in {manifest.container}/{manifest.prefix}: "
                                f"{extra[:5]}")
        except StoreError as e:
            problems.append(str(e))
    return VerifyResult(ok=not problems, objects_checked=counters.objects_read,
                        stored_bytes_checked=counters.stored_bytes_read,
                        logical_bytes_checked=counters.bytes_written,
                        blocks_checked=counters.blocks_verified,
                        chain=[m.ref for m in chain], problems=problems,
                        elapsed_s=time.monotonic() - started)


def _verify_v2(store: ObjectStore, config: DriverConfig, root: RootManifest, started: float,
               progress: ProgressCallback | None, cancelled: CancelledCallback | None
               ) -> VerifyResult:
    """verify() of a version-2 backup: stream its index objects, check all they list."""
    problems: list[str] = []
    ticker = ProgressTicker(root.size_bytes, progress, cancelled, config.check_interval_bytes)
    ticker.report(0, force=True)
    if ticker.should_cancel(0, force=True):
        raise BackupCancelled("verify cancelled")
    counters = PackCounters()

    def gap(first_block: int, end_block: int) -> None:
        counters.skipped_bytes += root.block_range_bytes(first_block, end_block - first_block)

    jobs = v2_pack_jobs(store, root, gap, problems, every_object=True)
    PackRunner(store, config, jobs, ticker, counters, fd=None, problems=problems).run()
    ticker.report(root.size_bytes, force=True)
    return VerifyResult(ok=not problems, objects_checked=counters.objects_read,
                        stored_bytes_checked=counters.stored_bytes_read,
                        logical_bytes_checked=counters.bytes_written,
                        blocks_checked=counters.blocks_verified,
                        chain=[root.ref], problems=problems,
                        elapsed_s=time.monotonic() - started)
