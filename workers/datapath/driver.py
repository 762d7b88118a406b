"""ChunkedDriver: the data path's one entry point, a thin facade over its modules.

It holds a store and a :class:`~.config.DriverConfig`, and passes both to
:mod:`.backup`, :mod:`.restore`, :mod:`.verify` and :mod:`.catalog`. It keeps no
per-job state, so one driver serves any number of jobs, also at the same time.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from typing import Any

from . import backup as _backup
from . import catalog
from . import refs
from . import restore as _restore
from . import verify as _verify
from .config import DriverConfig
from .config import KiB
from .config import MiB
from .progress import CancelledCallback
from .progress import ProgressCallback
from .refs import BackupRef
from .results import BackupResult
from .results import RestoreResult
from .results import VerifyResult
from .volume_io import limit_heap_growth

if TYPE_CHECKING:
    from workers.stores import ObjectStore
    from workers.stores.base import ObjectInfo


class ChunkedDriver:
    """Chunked, incremental, sparse-aware backups of volumes into an object store.

    :param block_size: digest granularity: an incremental stores the blocks whose
        SHA-256 changed (a multiple of 512).
    :param segment_size: the unit of work of the pipeline; no frame crosses a
        segment boundary (a multiple of block_size).
    :param pack_size: packs are closed once they hold this many compressed bytes.
    :param compression: "zstd", "zlib" or "none", at ``compression_level``
        (None: 1 for zstd, 6 for zlib).
    :param threads: compute workers (hash, compress, decompress).
    :param io_threads: store workers (put, get).
    :param max_inflight_bytes: bound of the bytes held by pending work
        (at least two segments).
    :param max_chain_depth: incrementals above a full backup before backup()
        takes a full backup instead.
    :param check_interval_bytes: how often progress/cancelled are called, in bytes.
    :param fsync_target: fsync the restore target (and start its writeback early).
    :param index_span: volume bytes one index object covers at most (rounded up to
        whole segments); bounds the memory of backup, restore and verify.

    Building a driver sets the process's allocator to map large buffers one by one
    (:func:`.volume_io.limit_heap_growth`), so RSS does not creep up with the data.
    """

    def __init__(self, store: ObjectStore, *, block_size: int = 16 * KiB,
                 compression: str = "zstd", threads: int = 2,
                 max_inflight_bytes: int = 64 * MiB, max_chain_depth: int = 64,
                 compression_level: int | None = None, segment_size: int = 4 * MiB,
                 pack_size: int = 8 * MiB, io_threads: int = 4,
                 check_interval_bytes: int = 32 * MiB, fsync_target: bool = True,
                 driver_id: str | None = None, index_span: int = 1024 * MiB) -> None:
        """:raise ValueError: if a setting is out of range or the compression unknown."""
        limit_heap_growth()         # RSS flat in the data moved (see there)
        self.store = store
        self.config = DriverConfig(
            block_size=int(block_size), segment_size=int(segment_size),
            pack_size=int(pack_size), compression=compression,
            compression_level=compression_level, threads=int(threads),
            io_threads=int(io_threads), max_inflight_bytes=int(max_inflight_bytes),
            max_chain_depth=int(max_chain_depth),
            check_interval_bytes=int(check_interval_bytes), fsync_target=fsync_target,
            driver_id=driver_id, index_span=int(index_span))

    @staticmethod
    def ref_for(backup_id: str, container: str | None = None) -> BackupRef:
        """Where backup ``backup_id`` lives (known before any byte is written).

        :raise InvalidContainer: if the id or the container breaks the naming rules.
        """
        return refs.ref_for(backup_id, container)

    @staticmethod
    def default_container(backup_id: str) -> str:
        """The container of a backup whose caller chose none (sharded by the id)."""
        return refs.default_container(backup_id)

    def backup(self, source_path: str, *, backup_id: str, volume_id: str, size_bytes: int,
               container: str | None = None, parent: tuple[str, str] | None = None,
               volume_meta: dict[str, Any] | None = None,
               progress: ProgressCallback | None = None,
               cancelled: CancelledCallback | None = None) -> BackupResult:
        """Back up a volume, incrementally on ``parent`` when it can serve.

        See :func:`.backup.backup` for what is raised.
        """
        return _backup.backup(self.store, self.config, source_path, backup_id=backup_id,
                              volume_id=volume_id, size_bytes=size_bytes, container=container,
                              parent=parent, volume_meta=volume_meta, progress=progress,
                              cancelled=cancelled)

    def restore(self, ref: tuple[str, str], target_path: str, *,
                target_is_zeroed: bool = False, progress: ProgressCallback | None = None,
                cancelled: CancelledCallback | None = None) -> RestoreResult:
        """Write backup ``ref`` onto a volume, every block checked first.

        See :func:`.restore.restore` for what is raised.
        """
        return _restore.restore(self.store, self.config, ref, target_path,
                                target_is_zeroed=target_is_zeroed, progress=progress,
                                cancelled=cancelled)

    def verify(self, ref: tuple[str, str], *, progress: ProgressCallback | None = None,
               cancelled: CancelledCallback | None = None) -> VerifyResult:
        """Re-read and check backup ``ref`` and its chain; damage is reported, not raised.

        :raise BackupCancelled: if ``cancelled()`` said so.
        """
        return _verify.verify(self.store, self.config, ref, progress=progress,
                              cancelled=cancelled)

    def delete(self, ref: tuple[str, str]) -> None:
        """Delete every object under backup ``ref``'s prefix (not of its parents);
        idempotent. For a backup that never completed, and for version 1; a version-2
        backup whose packs others may reference is deleted with :meth:`delete_manifest`
        and :meth:`delete_objects` instead.

        :raise InvalidContainer: if ``ref`` breaks the naming rules.
        :raise StoreError: if the store fails.
        """
        catalog.delete_backup(self.store, refs.checked_ref(ref))

    def delete_manifest(self, ref: tuple[str, str]) -> None:
        """Remove only the (root) manifest of backup ``ref``: the backup becomes invisible
        (no restore, verify or incremental can use it); its other objects stay.
        Idempotent.

        :raise InvalidContainer: if ``ref`` breaks the naming rules.
        :raise StoreError: if the store fails.
        """
        catalog.delete_manifest(self.store, refs.checked_ref(ref))

    def delete_objects(self, names: Iterable[str]) -> None:
        """Delete the objects of these full store names (batched where the store can);
        missing ones are not an error.

        :raise InvalidContainer: if a name breaks the naming rules (nothing is deleted).
        :raise StoreError: if the store fails.
        """
        self.store.delete_objects(list(names))

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose name starts with ``prefix``, sorted by name, as
        (name, size, mtime: UTC epoch seconds) -- the garbage collector's sweep.

        :raise StoreError: if the store fails.
        """
        return self.store.list_detailed(prefix)

    def referenced_objects(self, ref: tuple[str, str]) -> catalog.BackupObjects:
        """What stored backup ``ref`` references, read from the store alone (for import
        and rebuild): version 2, every object of its index objects and the index
        objects; version 1, its own packs and manifest (``format_version`` says which).

        :raise IntegrityError: if its manifest or an index object is missing or damaged.
        :raise InvalidBackup: if one is malformed.
        :raise StoreError: if the store fails.
        """
        return catalog.referenced_objects(self.store, ref)

    def read_manifest(self, ref: tuple[str, str]) -> dict[str, Any]:
        """The (root) manifest of backup ``ref`` as stored (a JSON object), once checked:
        version 1 or 2 (its ``version`` field).

        :raise IntegrityError: if it is missing or damaged.
        :raise InvalidBackup: if it is malformed or of an unknown version.
        """
        return catalog.read_manifest(self.store, ref).body
