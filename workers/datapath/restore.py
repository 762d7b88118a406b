"""Restoring a backup onto a volume: a stream of pack jobs, then fetch → check → write.

A *pack job* (:class:`PackJob`) is one object to fetch and the frames in it to
decompress, each with the block runs to check and write. Where the jobs come
from depends on the format version:

* Version 2 (:func:`v2_pack_jobs`): the backup's index objects are read one at a
  time, in volume order; the extents of one index object are grouped by object
  and by frame (a frame that several extents use is decompressed once). The
  gaps between extents are zero. Memory holds one index object and what is in
  flight, whatever the volume's size.
* Version 1 (:func:`v1_pack_jobs`): the chain is planned newest-wins, as it
  always was: walking the manifests newest first, a block belongs to the first
  backup that mentions it (as data in a frame, or as zeroed); what no backup
  mentions is zero.

Execution (:class:`PackRunner`): an I/O pool fetches each object whole and
checks its size and SHA-256 (every referenced pack is read whole, even when an
extent uses only part of it: packs are small, and every block is checked
against its own digest anyway), a compute pool decompresses the frames, checks
every block's SHA-256 and ``pwrite``s the runs. Bytes in flight are bounded by
``max_inflight_bytes``. Verify runs the same machinery without writing (see
:mod:`.verify`). Ranges that get no data are made zero (a punched hole where the
target allows) unless the caller says the target already reads as zeros.
"""
from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import NamedTuple

from .catalog import get_checked
from .catalog import load_chain
from .catalog import read_index
from .catalog import read_manifest
from .codec import reading_codec
from .config import DriverConfig
from .errors import BackupCancelled
from .errors import DataPathError
from .errors import IntegrityError
from .errors import InvalidBackup
from .errors import StoreError
from .errors import VolumeIOError
from .format import DIGEST_LEN
from .format import Frame
from .format import Manifest
from .format import VolumeGeometry
from .format import decode_digests
from .index import RootManifest
from .index import StoredObject
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

# Who claimed a block while planning a version-1 chain (newest backup first).
_UNCLAIMED = 0
_CLAIMED_ZERO = 1
_CLAIMED_DATA = 2


class BlockRun(NamedTuple):
    """A run of consecutive volume blocks."""

    first_block: int
    block_count: int


class FrameWork(NamedTuple):
    """A version-1 frame to read, and the runs of its blocks to check and write."""

    frame: Frame
    runs: list[BlockRun]


# (index in the chain, newest first; index of the pack in that backup's manifest)
PackKey = tuple[int, int]


class RunJob(NamedTuple):
    """Blocks [first_block, first_block + block_count) of a frame, and their digests:
    ``digests`` is base64 of ``digests_count`` digests starting at block
    ``digests_first`` (the frame's for version 1, the extent's own for version 2)."""

    first_block: int
    block_count: int
    digests: str
    digests_first: int
    digests_count: int


@dataclass
class FrameJob:
    """One frame of a pack: where it is, which blocks it holds, what to check and write."""

    pack_offset: int
    compressed_length: int
    first_block: int
    block_count: int
    runs: list[RunJob] = field(default_factory=list)


@dataclass
class PackJob:
    """One object to fetch and check, and its frames to decompress."""

    obj: StoredObject
    compression: str
    frames: list[FrameJob]
    geometry: VolumeGeometry


@dataclass
class RestorePlan:
    """Version 1: what to read from which pack, and which block runs get data."""

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
    skipped_bytes: int = 0             # zero ranges counted as done (zeroed or trusted)


def plan_restore(chain: list[Manifest]) -> RestorePlan:
    """The newest-wins plan of version-1 ``chain`` (newest first)."""
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


def v1_pack_jobs(chain: list[Manifest], work: dict[PackKey, list[FrameWork]]
                 ) -> Iterator[PackJob]:
    """The pack jobs of a version-1 work list (every pack of it, in key order)."""
    for key in sorted(work):
        chain_index, pack_index = key
        manifest = chain[chain_index]
        pack = manifest.objects[pack_index]
        frames = []
        for frame, runs in work[key]:
            frames.append(FrameJob(
                frame.pack_offset, frame.compressed_length, frame.first_block,
                frame.block_count,
                [RunJob(first, count, frame.digests, frame.first_block, frame.block_count)
                 for first, count in runs]))
        yield PackJob(StoredObject(object_name(manifest.ref, pack.name), pack.size,
                                   pack.sha256), manifest.compression, frames, manifest)


GapCallback = Callable[[int, int], None]


def v2_pack_jobs(store: ObjectStore, root: RootManifest, gap: GapCallback | None,
                 problems: list[str] | None = None, *, every_object: bool = False
                 ) -> Iterator[PackJob]:
    """The pack jobs of version-2 backup ``root``, read one index object at a time.

    ``gap(first_block, end_block)`` is called for every range no extent covers (in
    order, before the jobs of the data after it). With ``every_object`` an object
    the table lists but no extent uses still gets a job (verify checks it).
    With ``problems`` a damaged index object is reported there and skipped.

    :raise IntegrityError, InvalidBackup: for a damaged or malformed index object
        (without ``problems``).
    """
    position = 0
    for entry in root.index:
        try:
            index = read_index(store, root, entry)
        except (IntegrityError, InvalidBackup) as e:
            if problems is None:
                raise
            problems.append(str(e))
            continue
        by_object: dict[int, dict[tuple[int, int, int, int], FrameJob]] = {}
        for extent in index.extents:
            if gap is not None and extent.first_block > position:
                gap(position, extent.first_block)
            position = extent.end_block
            frames = by_object.setdefault(extent.obj, {})
            key = (extent.pack_offset, extent.compressed_length, extent.frame_first_block,
                   extent.frame_block_count)
            job = frames.get(key)
            if job is None:
                job = frames[key] = FrameJob(*key)
            job.runs.append(RunJob(extent.first_block, extent.block_count, extent.digests,
                                   extent.first_block, extent.block_count))
        slots = range(len(index.objects)) if every_object else by_object
        for slot in slots:
            frames = by_object.get(slot, {})
            yield PackJob(index.objects[slot], root.compression, list(frames.values()), root)
    if gap is not None and position < root.block_count:
        gap(position, root.block_count)


def restore(store: ObjectStore, config: DriverConfig, ref: tuple[str, str], target_path: str,
            *, target_is_zeroed: bool = False, progress: ProgressCallback | None = None,
            cancelled: CancelledCallback | None = None) -> RestoreResult:
    """Write backup ``ref`` onto ``target_path`` (version 1: with the chain it builds on).

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
    newest = read_manifest(store, ref)
    config = config.reading(newest.body)
    chain: list[Manifest | RootManifest] = [newest]
    if newest.format_version == 1:
        chain = load_chain(store, ref)
        newest = chain[0]
    size = newest.size_bytes
    ticker = ProgressTicker(size, progress, cancelled, config.check_interval_bytes)
    ticker.report(0, force=True)
    if ticker.should_cancel(0, force=True):
        raise BackupCancelled("restore cancelled before it started")
    try:
        fd = os.open(target_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise VolumeIOError(f"cannot open restore target {target_path!r}: {e}") from e
    counters = PackCounters()

    def gap(first_block: int, end_block: int) -> None:
        """A block range that gets no data: make it zero (unless it reads as zeros)."""
        length = newest.block_range_bytes(first_block, end_block - first_block)
        if not target_is_zeroed:
            offset = first_block * newest.block_size
            try:
                zero_range(fd, offset, length)
            except OSError as e:
                raise VolumeIOError(f"cannot zero target range at {offset}: {e}") from e
            counters.zeroed_bytes += length
        counters.skipped_bytes += length
        ticker.skip(length)
        ticker.report(counters.skipped_bytes + counters.bytes_written)
        if ticker.should_cancel():
            raise BackupCancelled("restore cancelled")

    try:
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size < size:
                os.ftruncate(fd, size)
        except OSError as e:
            raise VolumeIOError(f"cannot size restore target: {e}") from e
        if newest.format_version == 1:
            plan = plan_restore(chain)
            for first_block, count in zero_runs(plan.data_runs, newest.block_count):
                gap(first_block, first_block + count)
            jobs = v1_pack_jobs(chain, plan.work)
        else:
            jobs = v2_pack_jobs(store, newest, gap)
        PackRunner(store, config, jobs, ticker, counters, fd=fd).run()
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


def _job_cost(job: PackJob) -> int:
    """Bytes a pack job holds in flight: the object and its decompressed frames."""
    geometry = job.geometry
    return job.obj.size + sum(geometry.block_range_bytes(f.first_block, f.block_count)
                              for f in job.frames)


class PackRunner:
    """Fetches objects (I/O pool), then checks and writes their frames (compute pool).

    Jobs are drawn from ``jobs`` (in the calling thread) only while the bytes in
    flight allow. With ``fd=None`` nothing is written (verify): every listed run
    is still decompressed and checked, and damage goes to ``problems`` instead of
    raising.
    """

    def __init__(self, store: ObjectStore, config: DriverConfig, jobs: Iterator[PackJob],
                 ticker: ProgressTicker, counters: PackCounters, *, fd: int | None,
                 problems: list[str] | None = None) -> None:
        self.store = store
        self.config = config
        self.jobs = jobs
        self.ticker = ticker
        self.counters = counters
        self.fd = fd
        self.problems = problems

    def _done(self) -> int:
        return self.counters.skipped_bytes + self.counters.bytes_written

    def run(self) -> None:
        """Process every job.

        :raise BackupCancelled: if the caller cancelled.
        """
        config, ticker, counters = self.config, self.ticker, self.counters
        writing = self.fd is not None
        compute_pool = ThreadPoolExecutor(config.threads, thread_name_prefix="rs-cpu")
        io_pool = ThreadPoolExecutor(config.io_threads, thread_name_prefix="rs-io")
        pending: set[Future] = set()
        # future -> (stage, job, bytes it holds in flight)
        stages: dict[Future, tuple[str, PackJob, int]] = {}
        inflight = 0
        exhausted = False
        try:
            while True:
                while not exhausted and inflight < config.max_inflight_bytes:
                    job = next(self.jobs, None)
                    if job is None:
                        exhausted = True
                        break
                    future = io_pool.submit(get_checked, self.store, job.obj)
                    cost = _job_cost(job)
                    stages[future] = ("fetch", job, cost)
                    pending.add(future)
                    inflight += cost
                if not pending:
                    break
                finished, _ = wait(pending, timeout=ticker.time_interval,
                                   return_when=FIRST_COMPLETED)
                ticker.report(self._done())
                for future in finished:
                    pending.discard(future)
                    stage, job, cost = stages.pop(future)
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
                        applied = compute_pool.submit(self._apply, result, job)
                        stages[applied] = ("apply", job, cost)
                        pending.add(applied)
                    else:
                        inflight -= cost
                        written, blocks = result
                        counters.bytes_written += written
                        counters.blocks_verified += blocks
                        ticker.report(self._done())
                if ticker.should_cancel(self._done()):
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

    def _apply(self, data: bytes, job: PackJob) -> tuple[int, int]:
        """Compute worker: decompress frames, check digests, pwrite the runs.

        Returns (bytes written -- or checked, when not writing --, blocks checked).

        :raise IntegrityError: if a frame or a block does not match.
        :raise InvalidBackup: if a digest list is malformed.
        :raise VolumeIOError: if the target cannot be written.
        """
        geometry = job.geometry
        block_size, size = geometry.block_size, geometry.size_bytes
        codec = reading_codec(job.compression)
        name = job.obj.name
        fd = self.fd
        fsync_target = self.config.fsync_target
        view = memoryview(data)
        written = blocks = 0
        block_digest = self.config.block_digest
        for frame in job.frames:
            first_block = frame.first_block
            raw_len = geometry.block_range_bytes(first_block, frame.block_count)
            try:
                raw = codec.decompress(
                    view[frame.pack_offset:frame.pack_offset + frame.compressed_length],
                    raw_len)
            except IntegrityError as e:
                raise IntegrityError(f"{name}: {e}") from None
            raw_view = memoryview(raw)
            decoded: dict[str, bytes] = {}
            for run_first, run_count, digest_text, digests_first, digests_count in frame.runs:
                digests = decoded.get(digest_text)
                if digests is None:
                    try:
                        digests = decoded[digest_text] = decode_digests(digest_text)
                    except DataPathError:
                        raise InvalidBackup(f"{name}: malformed digests of blocks "
                                            f"{run_first}+{run_count}") from None
                    if len(digests) != digests_count * DIGEST_LEN:
                        raise InvalidBackup(f"{name}: digest list of blocks {digests_first}"
                                            f"+{digests_count} has the wrong length")
                for block in range(run_first, run_first + run_count):
                    i = block - first_block
                    d = block - digests_first
                    if block_digest(raw_view[i * block_size:(i + 1) * block_size]) \
                            != digests[d * DIGEST_LEN:(d + 1) * DIGEST_LEN]:
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
