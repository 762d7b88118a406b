"""Verifying a backup chain: re-read every object, check every digest, write nothing.

Unlike restore, verify checks *every* block of every frame of every backup of
the chain (not only the live ones), every pack including those no frame uses,
and that the store holds no object the manifests do not list. Damage is
reported, never raised: the caller records the outcome.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .catalog import load_chain
from .config import DriverConfig
from .errors import BackupCancelled
from .errors import IntegrityError
from .errors import InvalidBackup
from .errors import StoreError
from .format import MANIFEST_NAME
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
        chain = load_chain(store, ref)
    except (IntegrityError, InvalidBackup, StoreError) as e:
        return VerifyResult(ok=False, objects_checked=0, stored_bytes_checked=0,
                            logical_bytes_checked=0, blocks_checked=0, chain=[ref],
                            problems=[str(e)], elapsed_s=time.monotonic() - started)
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
    PackRunner(store, config, chain, work, ticker, counters, fd=None, problems=problems).run(0)
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
