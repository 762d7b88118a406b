"""Restoring a backup chain onto a volume: planning, then fetch → check → write.

Planning applies the chain newest-wins without reading any data: walking the
manifests newest first, a block belongs to the first backup that mentions it
(as data in a frame, or as zeroed). What no backup mentions is zero. The plan
says, for every pack, which runs of which frames are still *live*, and which
block runs of the volume receive data at all; everything else is made zero
(a punched hole where the target allows), unless the caller says the target
already reads as zeros.

Execution: an I/O pool fetches packs (checking each pack's size and SHA-256),
a compute pool decompresses the frames, checks every block's SHA-256 and
``pwrite``s the live runs. Bytes in flight are bounded by ``max_inflight_bytes``.
Verify runs the same machinery without writing (see :mod:`.verify`).
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import NamedTuple

from .catalog import load_chain
from .codec import reading_codec
from .config import DriverConfig
from .errors import BackupCancelled
from .errors import IntegrityError
from .errors import InvalidBackup
from .errors import NotFound
from .errors import StoreError
from .errors import VolumeIOError
from .format import DIGEST_LEN
from .format import Frame
from .format import Manifest
from .format import PackObject
from .progress import CancelledCallback
from .progress import ProgressCallback
from .progress import ProgressTicker
from .refs import BackupRef
from .refs import object_name
from .results import RestoreResult
from .volume_io import pwrite_all
from .volume_io import start_writeback
from .volume_io import zero_range

if TYPE_CHECKING:
    from workers.stores import ObjectStore

# Who claimed a block while planning (newest backup first).
_UNCLAIMED = 0
_CLAIMED_ZERO = 1
_CLAIMED_DATA = 2


class BlockRun(NamedTuple):
    """A run of consecutive volume blocks."""

    first_block: int
    block_count: int


class FrameWork(NamedTuple):
    """A frame to read, and the runs of its blocks to check and write."""

    frame: Frame
    runs: list[BlockRun]


# (index in the chain, newest first; index of the pack in that backup's manifest)
PackKey = tuple[int, int]


@dataclass
class RestorePlan:
    """What to read from which pack, and which block runs of the volume get data."""

    work: dict[PackKey, list[FrameWork]]
    data_runs: list[BlockRun]          # sorted; the rest of the volume is zero


@dataclass
class PackCounters:
    """Running totals of a restore or verify."""

    objects_read: int = 0
    stored_bytes_read: int = 0
    bytes_written: int = 0             # verify: logical bytes checked
    blocks_verified: int = 0
    zeroed_bytes: int = 0


def plan_restore(chain: list[Manifest]) -> RestorePlan:
    """The newest-wins plan of ``chain`` (newest first)."""
    blocks_per_segment = chain[0].blocks_per_segment
    claimed: dict[int, bytearray] = {}     # segment -> one _UNCLAIMED/_CLAIMED_* per block
    work: dict[PackKey, list[FrameWork]] = {}
    for chain_index, manifest in enumerate(chain):
        for run in manifest.zeroed:
            for segment, index, count in run.by_segment(blocks_per_segment):
                owners = claimed.get(segment)
                if owners is None:
                    owners = claimed[segment] = bytearray(blocks_per_segment)
                for x in range(index, index + count):
                    if not owners[x]:
                        owners[x] = _CLAIMED_ZERO
        for frame in manifest.frames:
            first_block, count = frame.first_block, frame.block_count
            segment, index = divmod(first_block, blocks_per_segment)
            owners = claimed.get(segment)
            if owners is None:
                owners = claimed[segment] = bytearray(blocks_per_segment)
            frame_owners = owners[index:index + count]
            if frame_owners.count(_UNCLAIMED) == count:          # fast path: all live
                runs = [BlockRun(first_block, count)]
                owners[index:index + count] = bytes([_CLAIMED_DATA]) * count
            else:
                runs = []
                run_start = None
                for x in range(count):
                    if not frame_owners[x]:
                        owners[index + x] = _CLAIMED_DATA
                        if run_start is None:
                            run_start = x
                    elif run_start is not None:
                        runs.append(BlockRun(first_block + run_start, x - run_start))
                        run_start = None
                if run_start is not None:
                    runs.append(BlockRun(first_block + run_start, count - run_start))
            if runs:
                work.setdefault((chain_index, frame.pack_index), []).append(
                    FrameWork(frame, runs))
    data_runs = []
    for segment in sorted(claimed):
        owners = claimed[segment]
        run_start = None
        for x in range(blocks_per_segment + 1):
            is_data = x < blocks_per_segment and owners[x] == _CLAIMED_DATA
            if is_data and run_start is None:
                run_start = x
            elif not is_data and run_start is not None:
                data_runs.append(BlockRun(segment * blocks_per_segment + run_start,
                                          x - run_start))
                run_start = None
    return RestorePlan(work, data_runs)


def zero_runs(data_runs: list[BlockRun], block_count: int) -> list[BlockRun]:
    """The block runs of [0, block_count) between the sorted ``data_runs``."""
    position = 0
    gaps = []
    for first_block, count in data_runs:
        if first_block > position:
            gaps.append(BlockRun(position, first_block - position))
        position = first_block + count
    if position < block_count:
        gaps.append(BlockRun(position, block_count - position))
    return gaps


def restore(store: ObjectStore, config: DriverConfig, ref: tuple[str, str], target_path: str,
            *, target_is_zeroed: bool = False, progress: ProgressCallback | None = None,
            cancelled: CancelledCallback | None = None) -> RestoreResult:
    """Write backup ``ref`` (and the chain it builds on) onto ``target_path``.

    Every block read is checked against its digest before it is written. With
    ``target_is_zeroed`` the target is trusted to read as zeros and only data is
    written; otherwise every other block is made zero. A regular file shorter
    than the volume is extended; nothing is written past the volume's size.

    :raise IntegrityError: if an object is missing or damaged.
    :raise InvalidBackup: if a manifest is malformed or the chain unusable.
    :raise BackupCancelled: if ``cancelled()`` said so (the target is then partial).
    :raise VolumeIOError: if the target cannot be opened or written.
    :raise StoreError: if the store fails.
    """
    started = time.monotonic()
    ref = BackupRef(*ref)
    chain = load_chain(store, ref)
    newest = chain[0]
    size = newest.size_bytes
    plan = plan_restore(chain)
    ticker = ProgressTicker(size, progress, cancelled, config.check_interval_bytes)
    ticker.report(0, force=True)
    if ticker.should_cancel(0, force=True):
        raise BackupCancelled("restore cancelled before it started")
    try:
        fd = os.open(target_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise VolumeIOError(f"cannot open restore target {target_path!r}: {e}") from e
    counters = PackCounters()
    try:
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size < size:
                os.ftruncate(fd, size)
        except OSError as e:
            raise VolumeIOError(f"cannot size restore target: {e}") from e
        done = 0
        if not target_is_zeroed:
            for first_block, count in zero_runs(plan.data_runs, newest.block_count):
                offset = first_block * newest.block_size
                length = newest.block_range_bytes(first_block, count)
                try:
                    zero_range(fd, offset, length)
                except OSError as e:
                    raise VolumeIOError(f"cannot zero target range at {offset}: {e}") from e
                counters.zeroed_bytes += length
                done += length
                ticker.skip(length)
                ticker.report(done)
                if ticker.should_cancel(done):
                    raise BackupCancelled("restore cancelled")
        else:
            done = size - sum(newest.block_range_bytes(first_block, count)
                              for first_block, count in plan.data_runs)
            ticker.skip(done)  # already zero: never written
        ticker.report(done)
        PackRunner(store, config, chain, plan.work, ticker, counters, fd=fd).run(done)
        if config.fsync_target:
            try:
                os.fsync(fd)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EROFS):
                    raise VolumeIOError(f"cannot fsync restore target: {e}") from e
    finally:
        os.close(fd)
    ticker.report(size, force=True)
    return RestoreResult(ok=True, bytes_written=counters.bytes_written,
                         zeroed_bytes=counters.zeroed_bytes,
                         objects_read=counters.objects_read,
                         stored_bytes_read=counters.stored_bytes_read,
                         blocks_verified=counters.blocks_verified,
                         chain=[m.ref for m in chain], elapsed_s=time.monotonic() - started)


def fetch_pack(store: ObjectStore, ref: BackupRef, pack: PackObject) -> bytes:
    """I/O worker: get a pack and check its size and SHA-256.

    :raise IntegrityError: if it is missing, truncated or damaged.
    :raise StoreError: if the store fails.
    """
    name = object_name(ref, pack.name)
    try:
        data = store.get(name)
    except NotFound:
        raise IntegrityError(f"object {name!r} is missing") from None
    if len(data) != pack.size:
        raise IntegrityError(f"object {name!r} is {len(data)} bytes, expected {pack.size} "
                             "(truncated or damaged)")
    if hashlib.sha256(data).hexdigest() != pack.sha256:
        raise IntegrityError(f"object {name!r} does not match its SHA-256 digest")
    return data


class PackRunner:
    """Fetches packs (I/O pool), then checks and writes their frames (compute pool).

    With ``fd=None`` nothing is written (verify): every listed run is still
    decompressed and checked, and damage goes to ``problems`` instead of raising.
    """

    def __init__(self, store: ObjectStore, config: DriverConfig, chain: list[Manifest],
                 work: dict[PackKey, list[FrameWork]], ticker: ProgressTicker,
                 counters: PackCounters, *, fd: int | None,
                 problems: list[str] | None = None) -> None:
        self.store = store
        self.config = config
        self.chain = chain
        self.work = work
        self.ticker = ticker
        self.counters = counters
        self.fd = fd
        self.problems = problems

    def run(self, done: int) -> int:
        """Process every pack of the work list; returns ``done`` plus the bytes written.

        :raise BackupCancelled: if the caller cancelled.
        """
        config, ticker, counters, work = self.config, self.ticker, self.counters, self.work
        writing = self.fd is not None
        compute_pool = ThreadPoolExecutor(config.threads, thread_name_prefix="rs-cpu")
        io_pool = ThreadPoolExecutor(config.io_threads, thread_name_prefix="rs-io")
        pending: set[Future] = set()
        # future -> (stage, pack key, bytes it holds in flight)
        stages: dict[Future, tuple[str, PackKey, int]] = {}
        inflight = 0
        keys = iter(sorted(work))
        exhausted = False
        try:
            while True:
                while not exhausted and inflight < config.max_inflight_bytes:
                    key = next(keys, None)
                    if key is None:
                        exhausted = True
                        break
                    chain_index, pack_index = key
                    manifest = self.chain[chain_index]
                    pack = manifest.objects[pack_index]
                    future = io_pool.submit(fetch_pack, self.store, manifest.ref, pack)
                    cost = pack.size + sum(
                        manifest.block_range_bytes(item.frame.first_block,
                                                   item.frame.block_count)
                        for item in work[key])
                    stages[future] = ("fetch", key, cost)
                    pending.add(future)
                    inflight += cost
                if not pending:
                    break
                finished, _ = wait(pending, timeout=ticker.time_interval,
                                   return_when=FIRST_COMPLETED)
                ticker.report(done)
                for future in finished:
                    pending.discard(future)
                    stage, key, cost = stages.pop(future)
                    chain_index, pack_index = key
                    manifest = self.chain[chain_index]
                    name = object_name(manifest.ref, manifest.objects[pack_index].name)
                    try:
                        result = future.result()
                    except (IntegrityError, InvalidBackup, StoreError) as e:
                        if self.problems is None:
                            raise
                        self.problems.append(str(e))
                        inflight -= cost
                        continue
                    if stage == "fetch":
                        counters.objects_read += 1
                        counters.stored_bytes_read += len(result)
                        applied = compute_pool.submit(self._apply, result, work[key],
                                                      manifest, name)
                        stages[applied] = ("apply", key, cost)
                        pending.add(applied)
                    else:
                        inflight -= cost
                        written, blocks = result
                        counters.bytes_written += written
                        counters.blocks_verified += blocks
                        done += written
                        ticker.report(done)
                if ticker.should_cancel(done):
                    raise BackupCancelled("restore cancelled" if writing
                                          else "verify cancelled")
        except BaseException:
            for future in pending:
                future.cancel()
            wait(pending)
            raise
        finally:
            compute_pool.shutdown(wait=True)
            io_pool.shutdown(wait=True)
        return done

    def _apply(self, data: bytes, items: list[FrameWork], manifest: Manifest, name: str
               ) -> tuple[int, int]:
        """Compute worker: decompress frames, check digests, pwrite the live runs.

        Returns (bytes written -- or checked, when not writing --, blocks checked).

        :raise IntegrityError: if a frame or a block does not match.
        :raise InvalidBackup: if a frame's digest list is malformed.
        :raise VolumeIOError: if the target cannot be written.
        """
        block_size, size = manifest.block_size, manifest.size_bytes
        codec = reading_codec(manifest.compression)
        fd = self.fd
        fsync_target = self.config.fsync_target
        view = memoryview(data)
        written = blocks = 0
        sha256 = hashlib.sha256
        for frame, runs in items:
            digests = frame.block_digests(name)
            first_block = frame.first_block
            raw_len = manifest.block_range_bytes(first_block, frame.block_count)
            raw = codec.decompress(
                view[frame.pack_offset:frame.pack_offset + frame.compressed_length], raw_len)
            raw_view = memoryview(raw)
            for run_first, run_count in runs:
                for block in range(run_first, run_first + run_count):
                    i = block - first_block
                    if sha256(raw_view[i * block_size:(i + 1) * block_size]).digest() \
                            != digests[i * DIGEST_LEN:(i + 1) * DIGEST_LEN]:
                        raise IntegrityError(f"{name}: block {block} does not match its digest")
                blocks += run_count
                if fd is not None:
                    start = (run_first - first_block) * block_size
                    chunk = raw_view[start:min((run_first - first_block + run_count)
                                               * block_size, raw_len)]
                    try:
                        pwrite_all(fd, chunk, run_first * block_size)
                        if fsync_target:
                            start_writeback(fd, run_first * block_size, len(chunk))
                    except OSError as e:
                        raise VolumeIOError(f"cannot write restore target at "
                                            f"{run_first * block_size}: {e}") from e
                    written += len(chunk)
                else:
                    written += min((run_first + run_count) * block_size, size) \
                        - run_first * block_size
        return written, blocks
