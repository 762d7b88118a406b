"""Backing up a volume: full or incremental, sparse-aware, in bounded memory.

Pipeline: the calling thread walks the data extents of the source (holes are
never read), cuts them into segment-aligned *tasks* and hands them to
``threads`` compute workers, which ``pread`` the range, SHA-256 every block (an
all-zero block is recognised by its digest), compare each digest with the
parent's and compress the runs of changed blocks into frames. The calling
thread packs the frames into packs that a small I/O pool writes. Bytes in
flight (raw task buffers plus packs not yet written) are bounded by
``max_inflight_bytes``, so memory does not grow with the volume. ``progress`` and
``cancelled`` are only ever called from the calling thread.

Chain depth: a full backup has ``chain_depth`` 0 and an incremental its
parent's depth + 1. ``max_chain_depth`` caps the number of incrementals above a
full backup: when the new backup would exceed it, a full backup is taken
instead and ``BackupResult.message`` says why (this never raises). So does any
other reason the parent cannot serve (unreadable, another volume size, block
size or volume).

Scale: holes cost nothing, but the manifest and the in-memory digest map grow
with the *non-zero* data (about 2-3 MB per GiB at the default 16 KiB blocks).
"""
from __future__ import annotations

import datetime
import hashlib
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait
from typing import TYPE_CHECKING
from typing import Any
from typing import NamedTuple

from .catalog import delete_backup
from .catalog import delete_quietly
from .catalog import load_chain
from .catalog import put_pack
from .config import DriverConfig
from .errors import BackupCancelled
from .errors import DataPathError
from .errors import InvalidBackup
from .errors import VolumeIOError
from .format import DIGEST_LEN
from .format import MANIFEST_NAME
from .format import PACK_NAME_FORMAT
from .format import BackupStats
from .format import Frame
from .format import Manifest
from .format import PackObject
from .format import ParentLink
from .format import ZeroedRun
from .format import encode_digests
from .format import encode_manifest
from .names import validate_identifier
from .progress import CancelledCallback
from .progress import ProgressCallback
from .progress import ProgressTicker
from .refs import BackupRef
from .refs import object_name
from .refs import ref_for
from .results import BackupResult
from .volume_io import data_extents
from .volume_io import pread_full

if TYPE_CHECKING:
    from workers.stores import ObjectStore

# What a scanned block is, in the per-task state array.
BLOCK_ZERO = 0
BLOCK_UNCHANGED = 1
BLOCK_CHANGED = 2


class SegmentDigests(NamedTuple):
    """The parent chain's effective state of one segment, block by block."""

    digests: bytearray         # blocks_per_segment * DIGEST_LEN bytes
    present: bytearray         # 1 where the block holds data, 0 where it is zero


class NewFrame(NamedTuple):
    """A frame a scan worker compressed; the calling thread places it in a pack."""

    first_block: int
    block_count: int
    data: bytes                # compressed
    digests: bytes             # block_count raw SHA-256 digests


class ScannedTask(NamedTuple):
    """What a scan worker found in one task."""

    frames: list[NewFrame]
    block_states: bytes        # one BLOCK_* per block of the task
    changed_bytes: int


class _Pending(NamedTuple):
    """A future of the pipeline, in submission order, and the bytes it holds in flight."""

    kind: str                  # "scan" or "put"
    future: Future
    inflight_bytes: int
    offset: int                # scan: task offset; put: pack index
    length: int                # scan: task length; put: 0


def parent_digests(chain: list[Manifest], blocks_per_segment: int
                   ) -> dict[int, SegmentDigests]:
    """Effective per-block digests of the newest backup of ``chain``, by segment index.

    :raise InvalidBackup: if a frame's digest list is malformed.
    """
    segments: dict[int, SegmentDigests] = {}
    for manifest in reversed(chain):          # oldest first, newer overwrite
        for frame in manifest.frames:
            digests = frame.block_digests()
            segment, index = divmod(frame.first_block, blocks_per_segment)
            state = segments.get(segment)
            if state is None:
                state = segments[segment] = SegmentDigests(
                    bytearray(blocks_per_segment * DIGEST_LEN), bytearray(blocks_per_segment))
            state.digests[index * DIGEST_LEN:(index + frame.block_count) * DIGEST_LEN] = digests
            state.present[index:index + frame.block_count] = b"\x01" * frame.block_count
        for run in manifest.zeroed:
            for segment, index, count in run.by_segment(blocks_per_segment):
                state = segments.get(segment)
                if state is not None:
                    state.present[index:index + count] = bytes(count)
    return segments


def segment_tasks(fd: int, size: int, block_size: int, segment_size: int
                  ) -> Iterator[tuple[int, int]]:
    """Yield (offset, length) of the block-aligned pieces of the data extents of ``fd``,
    none crossing a segment boundary."""
    covered = 0
    for extent_offset, extent_length in data_extents(fd, size):
        start = max(extent_offset - extent_offset % block_size, covered)
        end = min(-(-(extent_offset + extent_length) // block_size) * block_size, size)
        while start < end:
            stop = min(end, (start // segment_size + 1) * segment_size)
            yield start, stop - start
            start = stop
        covered = max(covered, end)


def _now_iso() -> str:
    """The manifest's created_at: UTC, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _choose_parent(store: ObjectStore, config: DriverConfig, ref: BackupRef,
                   parent: BackupRef, volume_id: str, size_bytes: int
                   ) -> tuple[list[Manifest] | None, str | None]:
    """The parent chain an incremental can build on, or None and why it cannot."""
    try:
        chain = load_chain(store, parent)
    except DataPathError as e:
        return None, f"parent backup unusable ({e}); took a full backup"
    newest = chain[0]
    if newest.size_bytes != size_bytes:
        return None, (f"volume size changed from {newest.size_bytes} to {size_bytes} "
                      "bytes since the parent backup; took a full backup")
    if newest.block_size != config.block_size or newest.segment_size != config.segment_size:
        return None, (f"block size changed from {newest.block_size} to {config.block_size} "
                      "since the parent backup; took a full backup")
    if newest.volume_id != volume_id:
        return None, (f"parent backup belongs to volume {newest.volume_id!r}, "
                      f"not {volume_id!r}; took a full backup")
    if newest.chain_depth + 1 > config.max_chain_depth:
        return None, (f"incremental chain would exceed max_chain_depth="
                      f"{config.max_chain_depth}; took a full backup")
    if parent == ref:
        return None, "parent is this very backup; took a full backup"
    return chain, None


def backup(store: ObjectStore, config: DriverConfig, source_path: str, *, backup_id: str,
           volume_id: str, size_bytes: int, container: str | None = None,
           parent: tuple[str, str] | None = None, volume_meta: dict[str, Any] | None = None,
           progress: ProgressCallback | None = None,
           cancelled: CancelledCallback | None = None) -> BackupResult:
    """Back up ``size_bytes`` of ``source_path`` as backup ``backup_id``.

    An incremental on ``parent`` when it can serve, else a full backup (the
    result's ``message`` says why). Nothing is left in the store on failure or
    cancellation; a completed backup with this id is never overwritten.

    :raise ValueError: for a bad volume_id or size_bytes.
    :raise InvalidContainer: for a bad backup_id or container.
    :raise InvalidBackup: if the backup already exists.
    :raise BackupCancelled: if ``cancelled()`` said so.
    :raise VolumeIOError: if the source cannot be read.
    :raise StoreError: if the store fails.
    """
    started = time.monotonic()
    validate_identifier(backup_id, "backup_id")
    if not isinstance(volume_id, str) or not volume_id:
        raise ValueError("volume_id must be a non-empty string")
    if not isinstance(size_bytes, int) or size_bytes < 0:
        raise ValueError("size_bytes must be a non-negative int")
    ref = ref_for(backup_id, container)

    message = None
    parent_state = None
    parent_link = None
    depth = 0
    if parent is not None:
        parent = BackupRef(*parent)
        chain, message = _choose_parent(store, config, ref, parent, volume_id, size_bytes)
        if chain is not None:
            parent_state = parent_digests(chain, config.blocks_per_segment)
            depth = chain[0].chain_depth + 1
            parent_link = ParentLink(parent.container, parent.prefix, chain[0].backup_id)

    # A completed backup with this id is never overwritten; leftovers of an
    # interrupted attempt (no manifest) are removed.
    if store.exists(object_name(ref, MANIFEST_NAME)):
        raise InvalidBackup(f"backup {ref.container}/{ref.prefix} already exists")
    delete_backup(store, ref)
    try:
        fd = os.open(source_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise VolumeIOError(f"cannot open source {source_path!r}: {e}") from e
    try:
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass
        pipeline = _BackupPipeline(store, config, ref, fd, size_bytes, parent_state,
                                   ProgressTicker(size_bytes, progress, cancelled,
                                                  config.check_interval_bytes))
        pipeline.run()
    except BaseException:
        delete_quietly(store, ref)
        raise
    finally:
        os.close(fd)

    try:
        pack_bytes = sum(o.size for o in pipeline.objects)
        manifest = Manifest(
            driver=config.driver_id, backup_id=backup_id, volume_id=volume_id,
            created_at=_now_iso(),
            container=ref.container, prefix=ref.prefix, size_bytes=size_bytes,
            block_size=config.block_size, segment_size=config.segment_size,
            compression=config.codec.name, compression_level=config.codec.level,
            incremental=parent_state is not None, parent=parent_link, chain_depth=depth,
            volume_meta=dict(volume_meta or {}), objects=pipeline.objects,
            frames=pipeline.frames, zeroed=pipeline.zeroed_runs(),
            stats=BackupStats(pipeline.data_bytes, pipeline.changed_bytes, pack_bytes))
        body = manifest.to_body()
        raw = encode_manifest(body)
        if cancelled is not None and cancelled():
            raise BackupCancelled(f"backup {backup_id} cancelled")
        store.put(object_name(ref, MANIFEST_NAME), raw)
    except BaseException:
        delete_quietly(store, ref)
        raise
    pipeline.ticker.report(size_bytes, force=True)  # the end, once the manifest is stored
    return BackupResult(
        container=ref.container, prefix=ref.prefix, object_count=len(pipeline.objects) + 1,
        stored_bytes=pack_bytes + len(raw), logical_bytes=size_bytes,
        incremental=parent_state is not None, message=message, manifest=body,
        data_bytes=pipeline.data_bytes, changed_bytes=pipeline.changed_bytes,
        elapsed_s=time.monotonic() - started)


class _BackupPipeline:
    """One backup's scan → pack → put pipeline (see the module docstring).

    Futures are consumed in submission order, so frames land in packs in volume
    order and the manifest does not depend on thread timing.
    """

    def __init__(self, store: ObjectStore, config: DriverConfig, ref: BackupRef, fd: int,
                 size: int, parent_state: dict[int, SegmentDigests] | None,
                 ticker: ProgressTicker) -> None:
        self.store = store
        self.config = config
        self.ref = ref
        self.fd = fd
        self.size = size
        self.parent_state = parent_state
        self.ticker = ticker
        block_size = config.block_size
        # An all-zero block is found by its digest; the volume's last block may be short.
        self.zero_digest_by_length = {0: hashlib.sha256(bytes(block_size)).digest()}
        if size % block_size:
            self.zero_digest_by_length[size % block_size] = \
                hashlib.sha256(bytes(size % block_size)).digest()
        self.frames: list[Frame] = []
        self.objects: list[PackObject] = []
        self.data_bytes = 0          # non-zero bytes read and digested
        self.changed_bytes = 0       # bytes of the blocks stored (before compression)
        self._pack_parts: list[bytes] = []     # compressed frames of the pack being built
        self._pack_length = 0
        self._pending: deque[_Pending] = deque()
        self._inflight = 0
        # For an incremental: which blocks hold data now, by segment (to find the zeroed).
        self._present_now: dict[int, bytearray] | None = \
            {} if parent_state is not None else None
        self._scan_pool: ThreadPoolExecutor | None = None
        self._io_pool: ThreadPoolExecutor | None = None

    def run(self) -> None:
        """Scan, pack and put the whole volume; returns when every pack is stored.

        :raise BackupCancelled: if the caller cancelled.
        """
        config, ticker = self.config, self.ticker
        ticker.report(0, force=True)
        if ticker.should_cancel(0, force=True):
            raise BackupCancelled("backup cancelled before it started")
        self._scan_pool = ThreadPoolExecutor(config.threads, thread_name_prefix="bk-scan")
        self._io_pool = ThreadPoolExecutor(config.io_threads, thread_name_prefix="bk-io")
        pending = self._pending
        scan_end = 0  # where the last data extent handed to the scan ended
        try:
            for offset, length in segment_tasks(self.fd, self.size, config.block_size,
                                                config.segment_size):
                if offset > scan_end:
                    ticker.skip(offset - scan_end)  # a hole: never read
                scan_end = offset + length
                if ticker.should_cancel(offset):
                    raise BackupCancelled("backup cancelled")
                while pending and self._inflight + length > config.max_inflight_bytes:
                    self._consume_one()
                if ticker.done < offset:
                    ticker.report(offset)
                try:
                    os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_WILLNEED)
                except OSError:
                    pass
                parent_segment = (self.parent_state.get(offset // config.segment_size)
                                  if self.parent_state is not None else None)
                future = self._scan_pool.submit(self._scan, offset, length, parent_segment)
                pending.append(_Pending("scan", future, length, offset, length))
                self._inflight += length
            while pending:
                self._consume_one()
            self._flush_pack()
            while pending:
                self._consume_one()
            if ticker.should_cancel(self.size, force=True):
                raise BackupCancelled("backup cancelled")
            if self.size > scan_end:
                ticker.skip(self.size - scan_end)
        except BaseException:
            for item in pending:
                item.future.cancel()
            for item in pending:
                try:
                    item.future.result()
                except BaseException:
                    pass
            raise
        finally:
            self._scan_pool.shutdown(wait=True)
            self._io_pool.shutdown(wait=True)
        ticker.report(self.size)

    def _scan(self, offset: int, length: int, parent_segment: SegmentDigests | None
              ) -> ScannedTask:
        """Compute worker: read, digest, classify and compress one task (inside one segment).

        :raise VolumeIOError: if the source cannot be read.
        """
        block_size = self.config.block_size
        try:
            buf = pread_full(self.fd, length, offset)
        except OSError as e:
            raise VolumeIOError(f"cannot read source at offset {offset}: {e}") from e
        view = memoryview(buf)
        first_block = offset // block_size
        index_in_segment = first_block % self.config.blocks_per_segment   # of block 0
        block_count = -(-length // block_size)
        sha256 = hashlib.sha256
        states = bytearray(block_count)
        digests: list[bytes | None] = [None] * block_count
        zero_digest_by_length = self.zero_digest_by_length
        full_zero_digest = zero_digest_by_length[0]
        if parent_segment is not None:
            parent_block_digests, parent_present = parent_segment
        for i in range(block_count):
            start = i * block_size
            digest = sha256(view[start:start + block_size]).digest()
            if digest == full_zero_digest or (
                    start + block_size > length
                    and digest == zero_digest_by_length.get(length - start)):
                continue
            digests[i] = digest
            j = index_in_segment + i
            if parent_segment is not None and parent_present[j] and \
                    parent_block_digests[j * DIGEST_LEN:(j + 1) * DIGEST_LEN] == digest:
                states[i] = BLOCK_UNCHANGED
            else:
                states[i] = BLOCK_CHANGED
        frames = []
        changed = 0
        compress = self.config.codec.compress
        i = 0
        while i < block_count:
            if states[i] != BLOCK_CHANGED:
                i += 1
                continue
            run_end = i
            while run_end < block_count and states[run_end] == BLOCK_CHANGED:
                run_end += 1
            raw = view[i * block_size:min(run_end * block_size, length)]
            changed += len(raw)
            frames.append(NewFrame(first_block + i, run_end - i, compress(raw),
                                   b"".join(digests[i:run_end])))
            i = run_end
        return ScannedTask(frames, bytes(states), changed)

    def _flush_pack(self) -> None:
        """Hand the pack being built to the I/O pool."""
        if not self._pack_parts:
            return
        index = len(self.objects)
        self.objects.append(None)      # filled in when the put completes
        data = b"".join(self._pack_parts)
        self._pack_parts, self._pack_length = [], 0
        future = self._io_pool.submit(put_pack, self.store, self.ref,
                                      PACK_NAME_FORMAT.format(index), data)
        self._pending.append(_Pending("put", future, len(data), index, 0))

    def _consume_one(self) -> None:
        """Wait for the oldest future and take in its result (calling thread only)."""
        ticker = self.ticker
        item = self._pending.popleft()
        while True:
            done, _ = wait([item.future], timeout=ticker.time_interval)
            if done:
                break
            ticker.report()
        result = item.future.result()
        self._inflight -= item.inflight_bytes
        if item.kind == "put":
            self.objects[item.offset] = result
            return
        self.data_bytes += item.length
        self.changed_bytes += result.changed_bytes
        if self._present_now is not None:
            blocks_per_segment = self.config.blocks_per_segment
            segment, index = divmod(item.offset // self.config.block_size, blocks_per_segment)
            present = self._present_now.get(segment)
            if present is None:
                present = self._present_now[segment] = bytearray(blocks_per_segment)
            present[index:index + len(result.block_states)] = result.block_states
        pack_size = self.config.pack_size
        for new in result.frames:
            if self._pack_length and self._pack_length + len(new.data) > pack_size:
                self._flush_pack()
            self.frames.append(Frame(len(self.objects), self._pack_length, len(new.data),
                                     new.first_block, new.block_count,
                                     encode_digests(new.digests)))
            self._pack_parts.append(new.data)
            self._pack_length += len(new.data)
            self._inflight += len(new.data)
        if self._pack_length >= pack_size:
            self._flush_pack()
        ticker.report(item.offset + item.length)

    def zeroed_runs(self) -> list[ZeroedRun]:
        """Block runs that hold data in the parent's state and are zero now."""
        zeroed: list[ZeroedRun] = []
        if self.parent_state is None:
            return zeroed
        blocks_per_segment = self.config.blocks_per_segment
        for segment in sorted(self.parent_state):
            was_present = self.parent_state[segment].present
            present = self._present_now.get(segment)
            run_start = None
            for j in range(blocks_per_segment + 1):
                became_zero = (j < blocks_per_segment and was_present[j]
                               and not (present is not None and present[j]))
                if became_zero and run_start is None:
                    run_start = j
                elif not became_zero and run_start is not None:
                    zeroed.append(ZeroedRun(segment * blocks_per_segment + run_start,
                                            j - run_start))
                    run_start = None
        return zeroed
