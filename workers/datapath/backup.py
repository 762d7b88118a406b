"""Backing up a volume (format version 2): full or incremental, sparse-aware, in memory
that does not grow with the volume.

Pipeline: the calling thread walks the data extents of the source (holes are
never read), cuts them into segment-aligned *tasks* and hands them to
``threads`` compute workers, which read the range into a reused buffer, SHA-256
every block (an all-zero block is recognised by its digest), compare each
digest with the parent's and compress the runs of changed blocks into frames.
The calling thread packs the frames into packs that a small I/O pool writes,
and turns what the workers found into the *extents* of the index object of the
current index span (:mod:`.index`): one per new frame, and, for an incremental,
one per run of unchanged blocks inside a parent frame (a reference to the
parent's pack). An index object is written once its span is done and its packs
are stored, so only one span's extents are ever held. Bytes in flight (task
buffers plus packs not yet written) are bounded by ``max_inflight_bytes``.
``progress`` and ``cancelled`` are only ever called from the calling thread.

Incremental: the parent's root manifest is read first, then its index objects
are streamed in volume order alongside the scan (:class:`ParentCursor`: one
parent index object in memory). The new backup references only objects listed
in its parent's index objects, plus its own new ones -- what the control plane
pins before the backup runs.

Chain depth: a full backup has ``chain_depth`` 0 and an incremental its
parent's depth + 1. ``max_chain_depth`` caps it (it bounds how fragmented the
extents of a volume get): when the new backup would exceed it, a full backup is
taken instead and ``BackupResult.message`` says why (this never raises). So does
any other reason the parent cannot serve (unreadable, format version 1, another
volume size, block size, compression or volume). A parent index object is only read
when the scan reaches its span, so one that is missing, damaged or malformed
(:class:`ParentUnusable`) is found while the backup runs: the attempt's objects are
deleted and the volume is scanned again as a full backup. Checking every parent
index object first would read them twice (they grow with the volume); a failure of
the store itself, or of the source, still fails the backup.
"""
from __future__ import annotations

import datetime
import os
import queue
import re
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
from .catalog import put_object
from .catalog import read_index
from .catalog import read_manifest
from .config import DriverConfig
from .errors import BackupCancelled
from .errors import DataPathError
from .errors import IntegrityError
from .errors import InvalidBackup
from .errors import VolumeIOError
from .format import DIGEST_LEN
from .format import MANIFEST_NAME
from .format import PACK_NAME_FORMAT
from .format import BackupStats
from .format import ParentLink
from .format import encode_digests
from .format import encode_manifest
from .index import INDEX_NAME_FORMAT
from .index import Extent
from .index import IndexEntry
from .index import IndexObject
from .index import RootManifest
from .index import StoredObject
from .names import validate_identifier
from .progress import CancelledCallback
from .progress import ProgressCallback
from .progress import ProgressTicker
from .refs import BackupRef
from .refs import object_name
from .refs import ref_for
from .results import BackupResult
from .volume_io import data_extents
from .volume_io import pread_into

if TYPE_CHECKING:
    from workers.stores import ObjectStore

# What a scanned block is, in the per-task state array.
BLOCK_ZERO = 0
BLOCK_UNCHANGED = 1
BLOCK_CHANGED = 2
_CHANGED_RUNS = re.compile(b"\x02+")
_UNCHANGED_RUNS = re.compile(b"\x01+")


class ParentSegment(NamedTuple):
    """The parent's state of one segment: per-block digests and presence, and the
    parent extents that lie in it (with their objects)."""

    digests: bytearray         # blocks_per_segment * DIGEST_LEN bytes
    present: bytearray         # 1 where the block holds data, 0 where it is zero
    extents: list[tuple[StoredObject, Extent]]


class NewFrame(NamedTuple):
    """A frame a scan worker compressed; the calling thread places it in a pack."""

    first_block: int
    block_count: int
    data: bytes                # compressed


class ScannedTask(NamedTuple):
    """What a scan worker found in one task."""

    frames: list[NewFrame]
    block_states: bytes        # one BLOCK_* per block of the task
    digests: bytes             # DIGEST_LEN per block of the task (zero blocks too)
    changed_bytes: int
    parent: ParentSegment | None   # the parent's state of the task's segment


class _Pending(NamedTuple):
    """A future of the pipeline, in submission order, and the bytes it holds in flight."""

    kind: str                  # "scan", "put" (a pack), "index" (build one), "iput"
    future: Future
    inflight_bytes: int
    offset: int                # scan: task offset; put: pack number; index/iput: number
    length: int                # scan: task length; else 0


# An extent being built: the object is ("new", pack number) until that pack is stored.
ObjectKey = tuple[str, int] | StoredObject


class ParentUnusable(DataPathError):
    """A parent index object is missing, damaged or malformed: the parent cannot serve
    (:func:`backup` then takes a full backup; it never raises this)."""


class ParentCursor:
    """Streams the extents of a version-2 parent in volume order, segment by segment,
    holding one parent index object at a time.

    :raise ParentUnusable: (from the constructor and :meth:`segment`) if a parent index
        object is missing, damaged or malformed.
    :raise StoreError: if the store fails.
    """

    def __init__(self, store: ObjectStore, root: RootManifest) -> None:
        self.root = root
        self._extents = self._iterate(store, root)
        self._segment: int | None = None
        self._state: ParentSegment | None = None
        try:
            self._next = next(self._extents, None)
        except (IntegrityError, InvalidBackup) as e:
            raise ParentUnusable(str(e)) from e

    @staticmethod
    def _iterate(store: ObjectStore, root: RootManifest
                 ) -> Iterator[tuple[StoredObject, Extent, str]]:
        for entry in root.index:
            index = read_index(store, root, entry)
            name = root.index_object_name(entry)
            for extent in index.extents:
                yield index.objects[extent.obj], extent, name

    def segment(self, segment: int) -> ParentSegment | None:
        """The parent's state of ``segment`` (None: all zero). Segments must be asked
        for in increasing order (the same one again is fine)."""
        if segment == self._segment:
            return self._state
        try:
            state = self._read_segment(segment)
        except (IntegrityError, InvalidBackup) as e:
            raise ParentUnusable(str(e)) from e
        self._segment, self._state = segment, state
        return state

    def _read_segment(self, segment: int) -> ParentSegment | None:
        blocks_per_segment = self.root.blocks_per_segment
        first = segment * blocks_per_segment
        end = first + blocks_per_segment
        while self._next is not None and self._next[1].end_block <= first:
            self._next = next(self._extents, None)
        taken = []
        while self._next is not None and self._next[1].first_block < end:
            taken.append(self._next)
            self._next = next(self._extents, None)
        state = None
        if taken:
            digests = bytearray(blocks_per_segment * DIGEST_LEN)
            present = bytearray(blocks_per_segment)
            for _obj, extent, name in taken:
                i = extent.first_block - first
                digests[i * DIGEST_LEN:(i + extent.block_count) * DIGEST_LEN] = \
                    extent.block_digests(name)
                present[i:i + extent.block_count] = b"\x01" * extent.block_count
            state = ParentSegment(digests, present, [(o, e) for o, e, _n in taken])
        return state


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
                   ) -> tuple[RootManifest | None, str | None]:
    """The parent an incremental can build on, or None and why it cannot."""
    try:
        manifest = read_manifest(store, parent)
    except DataPathError as e:
        return None, f"parent backup unusable ({e}); took a full backup"
    if manifest.format_version != 2:
        return None, (f"parent backup is in format version {manifest.format_version}, whose "
                      "blocks a new backup cannot share; took a full backup")
    if manifest.size_bytes != size_bytes:
        return None, (f"volume size changed from {manifest.size_bytes} to {size_bytes} "
                      "bytes since the parent backup; took a full backup")
    if manifest.block_size != config.block_size or \
            manifest.segment_size != config.segment_size:
        return None, (f"block size changed from {manifest.block_size} to {config.block_size} "
                      "since the parent backup; took a full backup")
    if manifest.body.get("digest") != config.digest_name or \
            manifest.body.get("digest_key_id") != config.digest_key_id:
        return None, ("block digests (encryption) changed since the parent backup; "
                      "took a full backup")
    if manifest.compression != config.codec.name:
        return None, (f"compression changed from {manifest.compression} to "
                      f"{config.codec.name} since the parent backup; took a full backup")
    if manifest.volume_id != volume_id:
        return None, (f"parent backup belongs to volume {manifest.volume_id!r}, "
                      f"not {volume_id!r}; took a full backup")
    if manifest.chain_depth + 1 > config.max_chain_depth:
        return None, (f"incremental chain would exceed max_chain_depth="
                      f"{config.max_chain_depth}; took a full backup")
    if parent == ref:
        return None, "parent is this very backup; took a full backup"
    return manifest, None


def backup(store: ObjectStore, config: DriverConfig, source_path: str, *, backup_id: str,
           volume_id: str, size_bytes: int, container: str | None = None,
           parent: tuple[str, str] | None = None, volume_meta: dict[str, Any] | None = None,
           progress: ProgressCallback | None = None,
           cancelled: CancelledCallback | None = None) -> BackupResult:
    """Back up ``size_bytes`` of ``source_path`` as backup ``backup_id``.

    An incremental on ``parent`` when it can serve, else a full backup (the
    result's ``message`` says why). Nothing is left under the backup's prefix on
    failure or cancellation; a completed backup with this id is never overwritten.

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
    parent_root = None
    parent_link = None
    depth = 0
    if parent is not None:
        parent = BackupRef(*parent)
        parent_root, message = _choose_parent(store, config, ref, parent, volume_id,
                                              size_bytes)
        if parent_root is not None:
            depth = parent_root.chain_depth + 1
            parent_link = ParentLink(parent.container, parent.prefix, parent_root.backup_id)

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

        def run(root: RootManifest | None) -> _BackupPipeline:
            cursor = ParentCursor(store, root) if root is not None else None
            pipeline = _BackupPipeline(store, config, ref, backup_id, fd, size_bytes, cursor,
                                       ProgressTicker(size_bytes, progress, cancelled,
                                                      config.check_interval_bytes))
            pipeline.run()
            return pipeline

        try:
            pipeline = run(parent_root)
        except ParentUnusable as e:
            # The parent cannot serve after all: none of this attempt is kept, and the
            # full backup references none of the parent's objects.
            delete_backup(store, ref)
            message = f"parent backup unusable ({e}); took a full backup"
            parent_root, parent_link, depth = None, None, 0
            pipeline = run(None)
    except BaseException:
        delete_quietly(store, ref)
        raise
    finally:
        os.close(fd)

    try:
        pack_bytes = sum(o.size for o in pipeline.packs)
        manifest = RootManifest(
            driver=config.driver_id, backup_id=backup_id, volume_id=volume_id,
            created_at=_now_iso(),
            container=ref.container, prefix=ref.prefix, size_bytes=size_bytes,
            block_size=config.block_size, segment_size=config.segment_size,
            compression=config.codec.name, compression_level=config.codec.level,
            incremental=parent_root is not None, parent=parent_link, chain_depth=depth,
            volume_meta=dict(volume_meta or {}), index=pipeline.index_entries,
            stats=BackupStats(pipeline.data_bytes, pipeline.changed_bytes, pack_bytes))
        body = manifest.to_body()
        body.update(digest=config.digest_name, digest_key_id=config.digest_key_id)
        raw = encode_manifest(body)
        if cancelled is not None and cancelled():
            raise BackupCancelled(f"backup {backup_id} cancelled")
        store.put(object_name(ref, MANIFEST_NAME), raw)
    except BaseException:
        delete_quietly(store, ref)
        raise
    pipeline.ticker.report(size_bytes, force=True)  # the end, once the manifest is stored
    new_objects = [*pipeline.packs, *pipeline.index_objects]
    return BackupResult(
        container=ref.container, prefix=ref.prefix, object_count=len(new_objects) + 1,
        stored_bytes=sum(o.size for o in new_objects) + len(raw), logical_bytes=size_bytes,
        incremental=parent_root is not None, message=message, manifest=body,
        data_bytes=pipeline.data_bytes, changed_bytes=pipeline.changed_bytes,
        elapsed_s=time.monotonic() - started,
        referenced_objects=list(pipeline.referenced.values()), new_objects=new_objects)


class _BackupPipeline:
    """One backup's scan → pack → put → index pipeline (see the module docstring).

    Futures are consumed in submission order, so frames land in packs in volume
    order, index objects are built after the packs they list are stored, and the
    objects do not depend on thread timing.
    """

    def __init__(self, store: ObjectStore, config: DriverConfig, ref: BackupRef,
                 backup_id: str, fd: int, size: int, parent: ParentCursor | None,
                 ticker: ProgressTicker) -> None:
        self.store = store
        self.config = config
        self.ref = ref
        self.backup_id = backup_id
        self.fd = fd
        self.size = size
        self.parent = parent
        self.ticker = ticker
        block_size = config.block_size
        # An all-zero block is found by its digest; the volume's last block may be short.
        self.zero_digest = config.block_digest(bytes(block_size))
        self.tail_length = size % block_size
        self.tail_zero_digest = config.block_digest(bytes(self.tail_length))
        self.packs: list[StoredObject | None] = []        # this backup's packs, by number
        self.index_objects: list[StoredObject] = []
        self.index_entries: list[IndexEntry] = []
        self.referenced: dict[str, StoredObject] = {}     # name -> object, first use order
        self.data_bytes = 0          # non-zero bytes read and digested
        self.changed_bytes = 0       # bytes of the blocks stored (before compression)
        self._pack_parts: list[bytes] = []     # compressed frames of the pack being built
        self._pack_length = 0
        self._span: int | None = None          # index span being built
        # Extents of the span being built: [key, offset, length, ffb, fbc, fb, bc, digests]
        self._span_extents: list[list[Any]] = []
        self._pending: deque[_Pending] = deque()
        self._inflight = 0
        self._buffers: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._scan_pool: ThreadPoolExecutor | None = None
        self._io_pool: ThreadPoolExecutor | None = None

    def run(self) -> None:
        """Scan, pack and put the whole volume; returns when every object is stored.

        :raise BackupCancelled: if the caller cancelled.
        """
        config, ticker = self.config, self.ticker
        ticker.report(0, force=True)
        if ticker.should_cancel(0, force=True):
            raise BackupCancelled("backup cancelled before it started")
        self._scan_pool = ThreadPoolExecutor(config.threads, thread_name_prefix="bk-scan")
        self._io_pool = ThreadPoolExecutor(config.io_threads, thread_name_prefix="bk-io")
        pending = self._pending
        blocks_per_segment = config.blocks_per_segment
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
                parent_segment = None
                if self.parent is not None:
                    parent_segment = self.parent.segment(
                        offset // config.block_size // blocks_per_segment)
                future = self._scan_pool.submit(self._scan, offset, length, parent_segment)
                pending.append(_Pending("scan", future, length, offset, length))
                self._inflight += length
            while pending:
                self._consume_one()
            self._close_span()
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

    def _buffer(self) -> bytearray:
        try:
            return self._buffers.get_nowait()
        except queue.Empty:
            return bytearray(self.config.segment_size)

    def _scan(self, offset: int, length: int, parent_segment: ParentSegment | None
              ) -> ScannedTask:
        """Compute worker: read, digest, classify and compress one task (inside one segment).

        :raise VolumeIOError: if the source cannot be read.
        """
        block_size = self.config.block_size
        buf = self._buffer()
        try:
            try:
                pread_into(self.fd, buf, length, offset)
            except OSError as e:
                raise VolumeIOError(f"cannot read source at offset {offset}: {e}") from e
            view = memoryview(buf)[:length]
            block_digest = self.config.block_digest
            digest_list = [block_digest(view[start:start + block_size])
                           for start in range(0, length, block_size)]
            block_count = len(digest_list)
            zero = self.zero_digest
            states = bytearray(block_count)
            if offset + length == self.size and self.tail_length:
                last = block_count - 1
                if digest_list[last] == self.tail_zero_digest:
                    digest_list[last] = zero        # a zero tail is a zero block
            if parent_segment is None:
                for i, digest in enumerate(digest_list):
                    if digest != zero:
                        states[i] = BLOCK_CHANGED
            else:
                parent_digests, parent_present = parent_segment.digests, parent_segment.present
                base = (offset // block_size) % self.config.blocks_per_segment
                for i, digest in enumerate(digest_list):
                    if digest == zero:
                        continue
                    j = base + i
                    if parent_present[j] and \
                            parent_digests[j * DIGEST_LEN:(j + 1) * DIGEST_LEN] == digest:
                        states[i] = BLOCK_UNCHANGED
                    else:
                        states[i] = BLOCK_CHANGED
            frames = []
            changed = 0
            compress = self.config.codec.compress
            first_block = offset // block_size
            for run in _CHANGED_RUNS.finditer(states):
                start, end = run.span()
                raw = view[start * block_size:min(end * block_size, length)]
                changed += len(raw)
                frames.append(NewFrame(first_block + start, end - start, compress(raw)))
            del view
            return ScannedTask(frames, bytes(states), b"".join(digest_list), changed,
                               parent_segment)
        finally:
            self._buffers.put(buf)

    def _flush_pack(self) -> None:
        """Hand the pack being built to the I/O pool."""
        if not self._pack_parts:
            return
        number = len(self.packs)
        self.packs.append(None)      # filled in when the put completes
        parts, length = self._pack_parts, self._pack_length
        self._pack_parts, self._pack_length = [], 0
        future = self._io_pool.submit(put_object, self.store, self.ref,
                                      PACK_NAME_FORMAT.format(number), parts, digest=False)
        self._pending.append(_Pending("put", future, length, number, 0))

    def _close_span(self) -> None:
        """End the index span being built: its last pack goes, then its index object."""
        self._flush_pack()
        if self._span_extents:
            done: Future = Future()
            done.set_result((self._span, self._span_extents))
            self._pending.append(_Pending("index", done, 0, 0, 0))
        self._span_extents = []

    def _add_extent(self, key: ObjectKey, pack_offset: int, compressed_length: int,
                    frame_first: int, frame_count: int, first_block: int, block_count: int,
                    digests: bytes) -> None:
        """Append an extent to the span, merged into the previous one if it continues it."""
        extents = self._span_extents
        if extents:
            last = extents[-1]
            if last[0] == key and last[1] == pack_offset and \
                    last[5] + last[6] == first_block:
                last[6] += block_count
                last[7] += digests
                return
        extents.append([key, pack_offset, compressed_length, frame_first, frame_count,
                        first_block, block_count, digests])

    def _take_task(self, offset: int, result: ScannedTask) -> None:
        """Place a scanned task's frames in packs and its blocks in extents."""
        config = self.config
        first_block = offset // config.block_size
        span = first_block // config.blocks_per_index
        if span != self._span:
            self._close_span()
            self._span = span
        pack_size = config.pack_size
        placed = []
        for new in result.frames:
            if self._pack_length and self._pack_length + len(new.data) > pack_size:
                self._flush_pack()
            i = new.first_block - first_block
            placed.append((new.first_block, ("new", len(self.packs)), self._pack_length,
                           len(new.data), new.block_count,
                           result.digests[i * DIGEST_LEN:(i + new.block_count) * DIGEST_LEN]))
            self._pack_parts.append(new.data)
            self._pack_length += len(new.data)
            self._inflight += len(new.data)
        parent_segment = result.parent
        if parent_segment is not None:
            for run in _UNCHANGED_RUNS.finditer(result.block_states):
                start, end = run.span()
                lo_run, hi_run = first_block + start, first_block + end
                for obj, extent in parent_segment.extents:
                    lo = max(lo_run, extent.first_block)
                    hi = min(hi_run, extent.end_block)
                    if lo < hi:
                        placed.append((lo, obj, extent.pack_offset, extent.compressed_length,
                                       hi - lo, result.digests[
                                           (lo - first_block) * DIGEST_LEN:
                                           (hi - first_block) * DIGEST_LEN], extent))
            placed.sort(key=lambda p: p[0])
        for item in placed:
            if len(item) == 6:     # a new frame: the extent is the whole frame
                block, key, pack_offset, compressed_length, count, digests = item
                self._add_extent(key, pack_offset, compressed_length, block, count, block,
                                 count, digests)
            else:                  # part of a parent frame
                block, obj, pack_offset, compressed_length, count, digests, extent = item
                self._add_extent(obj, pack_offset, compressed_length,
                                 extent.frame_first_block, extent.frame_block_count, block,
                                 count, digests)
        if self._pack_length >= pack_size:
            self._flush_pack()

    def _build_index(self, span: int, extents: list[list[Any]]) -> None:
        """Write the index object of a finished span (its packs are all stored)."""
        config = self.config
        number = len(self.index_objects)
        first = span * config.blocks_per_index
        count = min(config.blocks_per_index, -(-self.size // config.block_size) - first)
        table: dict[str, int] = {}
        objects: list[StoredObject] = []
        wire = []
        for key, pack_offset, length, frame_first, frame_count, block, block_count, digests \
                in extents:
            obj = self.packs[key[1]] if isinstance(key, tuple) else key
            slot = table.get(obj.name)
            if slot is None:
                slot = table[obj.name] = len(objects)
                objects.append(obj)
                self.referenced.setdefault(obj.name, obj)
            wire.append(Extent(slot, pack_offset, length, frame_first, frame_count, block,
                               block_count, encode_digests(digests)))
        body = IndexObject(first, count, objects, wire).to_body(self.ref, self.backup_id)
        data = encode_manifest(body)
        name = INDEX_NAME_FORMAT.format(number)
        self.index_entries.append(IndexEntry(name, len(data), "", first, count))
        self.index_objects.append(None)
        future = self._io_pool.submit(put_object, self.store, self.ref, name, data)
        self._pending.append(_Pending("iput", future, len(data), number, 0))
        self._inflight += len(data)

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
            self.packs[item.offset] = result
            return
        if item.kind == "index":
            self._build_index(*result)
            return
        if item.kind == "iput":
            self.index_objects[item.offset] = result
            self.referenced.setdefault(result.name, result)
            entry = self.index_entries[item.offset]
            self.index_entries[item.offset] = entry._replace(sha256=result.sha256)
            return
        self.data_bytes += item.length
        self.changed_bytes += result.changed_bytes
        self._take_task(item.offset, result)
        ticker.report(item.offset + item.length)
