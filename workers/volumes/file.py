"""File volume backend: each volume is a sparse raw image named ``volume-<id>``.

Snapshots are sparse copies named ``snapshot-<id>`` beside the volumes, so a
backup of a snapshot reads a stable image while the volume keeps changing.
No Flask, Celery or ORM here.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

GiB = 1024 ** 3
_ID = re.compile(r"^[0-9a-f-]{36}$")
COPY_CHUNK = 64 * 1024 * 1024


def _check_id(resource_id: str) -> str:
    if not _ID.match(resource_id):
        raise ValueError(f"not a resource id: {resource_id!r}")
    return resource_id


def data_extents(fd: int, size: int):
    """Yield (offset, length) of the allocated regions of a file (all of it if unknown)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield offset, size - offset
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        end = min(end, size)
        if end > start:
            yield start, end - start
        offset = end


def sparse_copy(src: str, dst: str) -> None:
    """Copy a file keeping its holes; written to a temporary name, then renamed."""
    tmp = f"{dst}.tmp-{os.getpid()}"
    size = os.path.getsize(src)
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        fout.truncate(size)
        for start, length in data_extents(fin.fileno(), size):
            done = 0
            while done < length:
                n = min(COPY_CHUNK, length - done)
                try:
                    copied = os.copy_file_range(fin.fileno(), fout.fileno(), n,
                                                start + done, start + done)
                except OSError:
                    copied = 0
                if copied <= 0:
                    data = os.pread(fin.fileno(), n, start + done)
                    copied = os.pwrite(fout.fileno(), data, start + done)
                done += copied
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dst)


class FileVolumeBackend:
    """Volumes and snapshots as files under one directory of the node."""

    def __init__(self, root: str):
        self.root = Path(root)

    def volume_path(self, volume_id: str) -> str:
        return str(self.root / f"volume-{_check_id(volume_id)}")

    def snapshot_path(self, snapshot_id: str) -> str:
        return str(self.root / f"snapshot-{_check_id(snapshot_id)}")

    def create_volume(self, volume_id: str, size_gib: int) -> str:
        """Create (or grow to) a sparse image of ``size_gib`` GiB; idempotent."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.volume_path(volume_id)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o660)
        try:
            if os.fstat(fd).st_size < size_gib * GiB:
                os.ftruncate(fd, size_gib * GiB)
        finally:
            os.close(fd)
        return path

    def delete_volume(self, volume_id: str) -> None:
        """Remove the image; a missing one counts as deleted."""
        try:
            os.unlink(self.volume_path(volume_id))
        except FileNotFoundError:
            pass

    def create_snapshot(self, snapshot_id: str, volume_id: str) -> str:
        path = self.snapshot_path(snapshot_id)
        sparse_copy(self.volume_path(volume_id), path)
        return path

    def delete_snapshot(self, snapshot_id: str) -> None:
        try:
            os.unlink(self.snapshot_path(snapshot_id))
        except FileNotFoundError:
            pass

    def exists(self, volume_id: str) -> bool:
        return os.path.exists(self.volume_path(volume_id))
