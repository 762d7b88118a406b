"""An object store in a POSIX directory: object ``a/b/c`` is the file ``<root>/a/b/c``.

put() writes a temporary file in the target directory, fsyncs it, renames it
over the final name and fsyncs the directory, so a reader sees either nothing
or the whole object, also after a crash. Temporary names carry ``~``, which no
valid object name holds, so they never show in a listing.
"""
from __future__ import annotations

import errno
import os
import uuid

from workers.datapath.errors import NotFound
from workers.datapath.errors import PermanentStoreError
from workers.datapath.errors import StoreError
from workers.datapath.errors import TransientStoreError
from workers.datapath.names import validate_object_name
from workers.datapath.names import validate_prefix_arg
from workers.datapath.volume_io import pread_into

from .base import ObjectInfo
from .base import ObjectStore

_TMP_MARK = "~tmp~"
_PUT_ATTEMPTS = 5
# Errors that can go away: the file system is busy, full or its server unreachable.
_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EINTR, errno.EIO, errno.ETIMEDOUT,
                               errno.ESTALE, errno.ENOSPC, errno.EDQUOT, errno.EBUSY})


def _store_error(error: OSError, name: str) -> StoreError:
    """The StoreError of an OSError: transient or permanent by its errno."""
    cls = TransientStoreError if error.errno in _TRANSIENT_ERRNOS else PermanentStoreError
    return cls(f"posix store error on {name!r}: {error}", name=name)


class PosixStore(ObjectStore):
    """Objects are files below ``root``; directories are made and removed as needed."""

    kind = "posix"

    def __init__(self, path: str, *, fsync: bool = True, create: bool = True) -> None:
        """:raise PermanentStoreError: if ``path`` is empty or not a directory."""
        if not path:
            raise PermanentStoreError("posix store needs a path")
        self.root = os.path.abspath(path)
        self.fsync = fsync
        if create:
            os.makedirs(self.root, exist_ok=True)
        if not os.path.isdir(self.root):
            raise PermanentStoreError(f"posix store root {self.root!r} is not a directory")

    def describe(self) -> str:
        """``posix:`` and the root directory."""
        return f"posix:{self.root}"

    def _path(self, name: str) -> str:
        validate_object_name(name)
        return os.path.join(self.root, name)

    @staticmethod
    def _fsync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _makedirs(self, directory: str) -> None:
        """Create ``directory`` (and parents), fsyncing the parent of each one created."""
        if os.path.isdir(directory):
            return
        parent = os.path.dirname(directory)
        if parent != directory and not os.path.isdir(parent):
            self._makedirs(parent)
        try:
            os.mkdir(directory)
        except FileExistsError:
            return
        if self.fsync:
            self._fsync_dir(parent)

    def put(self, name: str, data: bytes | memoryview) -> None:
        """Write ``data`` to a temporary file, then rename it over ``name``."""
        self.put_parts(name, [data])

    def put_parts(self, name: str, parts: list[bytes | memoryview]) -> None:
        """Write the parts one after the other to a temporary file (no joined copy),
        then rename it over ``name``."""
        path = self._path(name)
        directory = os.path.dirname(path)
        tmp = f"{path}.{_TMP_MARK}{uuid.uuid4().hex}"
        try:
            for attempt in range(_PUT_ATTEMPTS):
                self._makedirs(directory)
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                    break
                except FileNotFoundError:
                    # A concurrent delete removed the directory as it emptied: make it again.
                    if attempt == _PUT_ATTEMPTS - 1:
                        raise
            try:
                _write_all(fd, parts)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            if self.fsync:
                self._fsync_dir(directory)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise _store_error(e, name) from e

    def get(self, name: str) -> bytes:
        """The bytes of the file of ``name``; NotFound if there is none."""
        return self._read(name, lambda f: f.read())

    def get_buffer(self, name: str) -> bytearray:
        """The bytes of the file of ``name``, read straight into a bytearray (a put
        replaces a file by a rename, never in place: an open file keeps its size)."""
        def read(f) -> bytearray:
            buf = bytearray(os.fstat(f.fileno()).st_size)
            pread_into(f.fileno(), buf, len(buf), 0)
            return buf
        return self._read(name, read)

    def _read(self, name: str, read):
        path = self._path(name)
        try:
            with open(path, "rb", buffering=0) as f:
                return read(f)
        except FileNotFoundError:
            raise NotFound(f"object {name!r} not found in {self.describe()}", name=name) from None
        except IsADirectoryError:
            raise NotFound(f"object {name!r} is a directory in {self.describe()}",
                           name=name) from None
        except OSError as e:
            raise _store_error(e, name) from e

    def exists(self, name: str) -> bool:
        """Whether the file of ``name`` exists."""
        return os.path.isfile(self._path(name))

    def delete(self, name: str) -> None:
        """Remove the file of ``name`` and the directories it leaves empty."""
        path = self._path(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except IsADirectoryError:
            return
        except OSError as e:
            raise _store_error(e, name) from e
        self._prune_empty_dirs(os.path.dirname(path))

    def _prune_empty_dirs(self, directory: str) -> None:
        """Best effort: remove directories left empty, from ``directory`` up to the root."""
        while directory != self.root and directory.startswith(self.root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:
                break
            directory = os.path.dirname(directory)

    def purge_incomplete(self, prefix: str) -> None:
        """Remove temporary files of interrupted puts in directory ``prefix`` (ends in /).

        That directory only, not the ones below it: they may be other containers.
        """
        validate_prefix_arg(prefix)
        top = os.path.join(self.root, prefix.rstrip("/")) if prefix.endswith("/") else None
        if top is None or not os.path.isdir(top):
            return
        for entry in os.scandir(top):
            if entry.is_file() and _TMP_MARK in entry.name:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass
        self._prune_empty_dirs(top)

    def list(self, prefix: str = "") -> list[str]:
        """Sorted names that start with ``prefix`` (temporary files left out)."""
        return [name for name, _path in self._walk(prefix)]

    def list_detailed(self, prefix: str = "") -> list[ObjectInfo]:
        """Sorted (name, size, mtime) of the names that start with ``prefix``."""
        found = []
        for name, path in self._walk(prefix):
            try:
                st = os.stat(path)
            except FileNotFoundError:      # deleted while we listed
                continue
            except OSError as e:
                raise _store_error(e, name) from e
            found.append(ObjectInfo(name, st.st_size, st.st_mtime))
        return found

    def _walk(self, prefix: str) -> list[tuple[str, str]]:
        """Sorted (name, path) of the objects whose names start with ``prefix``."""
        validate_prefix_arg(prefix)
        # Walk from the deepest directory that the prefix fully names.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = os.path.join(self.root, base) if base else self.root
        names: list[tuple[str, str]] = []
        if not os.path.isdir(top):
            return names
        for dirpath, dirnames, filenames in os.walk(top):
            relative = os.path.relpath(dirpath, self.root)
            relative = "" if relative == "." else relative.replace(os.sep, "/") + "/"
            # prune directories that cannot match
            dirnames[:] = [d for d in dirnames
                           if (relative + d + "/").startswith(prefix)
                           or prefix.startswith(relative + d + "/")]
            for filename in filenames:
                if _TMP_MARK in filename:
                    continue
                full = relative + filename
                if full.startswith(prefix):
                    names.append((full, os.path.join(dirpath, filename)))
        names.sort()
        return names


_IOV_MAX = 1024   # Linux's limit on the buffers of one writev


def _write_all(fd: int, parts: list[bytes | memoryview]) -> None:
    """Write the parts one after the other to ``fd``, as few system calls as can be."""
    pending = [memoryview(p) for p in parts if len(p)]
    while pending:
        batch = pending[:_IOV_MAX]
        written = os.writev(fd, batch)
        # Drop what was written; a short write leaves the rest of one part.
        done = 0
        while done < len(batch) and written >= len(batch[done]):
            written -= len(batch[done])
            done += 1
        if done < len(batch) and written:
            batch[done] = batch[done][written:]
        pending = batch[done:] + pending[len(batch):]
