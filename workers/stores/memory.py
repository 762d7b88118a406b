"""An object store in memory: for tests, and for trying the data path without a disk.

Same semantics as the other stores (names validated, atomic puts, sorted
prefix listing, NotFound for a missing object); one lock makes it thread-safe.
Objects are copied in and handed out as immutable bytes, so a caller that
changes its buffer after put() cannot change the stored object.
"""
from __future__ import annotations

import threading
import time

from workers.datapath.errors import NotFound
from workers.datapath.names import validate_object_name
from workers.datapath.names import validate_prefix_arg

from .base import ObjectInfo
from .base import ObjectStore


class MemoryStore(ObjectStore):
    """Objects in a dict of this process; gone when it ends."""

    kind = "memory"

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._mtimes: dict[str, float] = {}
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes | memoryview) -> None:
        """Store a copy of ``data`` under ``name``."""
        validate_object_name(name)
        blob = bytes(data)
        with self._lock:
            self._objects[name] = blob
            self._mtimes[name] = time.time()

    def get(self, name: str) -> bytes:
        """The bytes of ``name``; NotFound if there is none."""
        validate_object_name(name)
        with self._lock:
            blob = self._objects.get(name)
        if blob is None:
            raise NotFound(f"object {name!r} not found in {self.describe()}", name=name)
        return blob

    def exists(self, name: str) -> bool:
        """Whether ``name`` is stored."""
        validate_object_name(name)
        with self._lock:
            return name in self._objects

    def delete(self, name: str) -> None:
        """Remove ``name`` if it is stored."""
        validate_object_name(name)
        with self._lock:
            self._objects.pop(name, None)
            self._mtimes.pop(name, None)

    def list(self, prefix: str = "") -> list[str]:
        """Sorted names that start with ``prefix``."""
        validate_prefix_arg(prefix)
        with self._lock:
            names = [n for n in self._objects if n.startswith(prefix)]
        names.sort()
        return names

    def list_detailed(self, prefix: str = "") -> list[ObjectInfo]:
        """Sorted (name, size, mtime) of the names that start with ``prefix``."""
        validate_prefix_arg(prefix)
        with self._lock:
            found = [ObjectInfo(n, len(b), self._mtimes[n]) for n, b in self._objects.items()
                     if n.startswith(prefix)]
        found.sort()
        return found
