"""The interface every object store implements.

A store is flat: names are ``/``-separated paths validated by
:mod:`workers.datapath.names` (the same rules everywhere, so a backup can move
between stores), ``list(prefix)`` is a plain string-prefix match, as in S3, and
returns sorted names. ``put`` is atomic: a reader sees all of an object or
nothing. Failures raise :class:`~workers.datapath.errors.StoreError` subclasses
whose ``kind`` says whether a retry may help.
"""
from __future__ import annotations

import abc
from typing import NamedTuple

from workers.datapath.names import validate_object_name


class ObjectInfo(NamedTuple):
    """An object as a detailed listing shows it."""

    name: str
    size: int
    mtime: float               # last modified, seconds since the epoch (UTC)


class ObjectStore(abc.ABC):
    """A flat object store. Implementations must be thread-safe."""

    kind = "abstract"

    @abc.abstractmethod
    def put(self, name: str, data: bytes | memoryview) -> None:
        """Store ``data`` under ``name`` atomically (all or nothing), replacing any object.

        :raise InvalidContainer: if ``name`` breaks the naming rules.
        :raise StoreError: if the store fails.
        """

    def put_parts(self, name: str, parts: list[bytes | memoryview]) -> None:
        """Store the concatenation of ``parts`` under ``name``, like :meth:`put`. Stores
        that can write the parts without joining them first override this."""
        self.put(name, parts[0] if len(parts) == 1 else b"".join(parts))

    @abc.abstractmethod
    def get(self, name: str) -> bytes:
        """The bytes of ``name``.

        :raise NotFound: if it does not exist.
        :raise StoreError: if the store fails.
        """

    def get_buffer(self, name: str) -> bytearray:
        """The bytes of ``name`` in a buffer the caller may change (a decryption in
        place). Stores that can read into one directly override this.

        :raise NotFound: if it does not exist.
        :raise StoreError: if the store fails.
        """
        return bytearray(self.get(name))

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name``; a missing object is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted names that start with ``prefix``."""

    @abc.abstractmethod
    def exists(self, name: str) -> bool:
        """Whether object ``name`` exists."""

    @abc.abstractmethod
    def list_detailed(self, prefix: str = "") -> list[ObjectInfo]:
        """Like :meth:`list`, with each object's size and modification time."""

    def delete_objects(self, names: list[str]) -> None:
        """Remove every object of ``names``; missing ones are not an error. Every name is
        validated before anything is deleted. Stores that can batch override this.

        :raise InvalidContainer: if a name breaks the naming rules.
        :raise StoreError: if the store fails (some objects may be gone already).
        """
        for name in names:
            validate_object_name(name)
        for name in names:
            self.delete(name)

    def purge_incomplete(self, prefix: str) -> None:  # noqa: B027 - a no-op is the default
        """Remove leftovers of puts that never completed (a writer killed mid-put)
        under ``prefix``. Only call it when no writer can still be working there.

        Stores whose puts leave nothing behind keep this no-op.
        """

    def describe(self) -> str:
        """Short description for logs (no secrets)."""
        return self.kind
