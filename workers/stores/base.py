"""The interface every object store implements.

A store is flat: names are ``/``-separated paths validated by
:mod:`workers.datapath.names` (the same rules everywhere, so a backup can move
between stores), ``list(prefix)`` is a plain string-prefix match, as in S3, and
returns sorted names. ``put`` is atomic: a reader sees all of an object or
nothing. Failures raise :class:`~workers.datapath.errors.StoreError` subclasses
whose ``kind`` says whether a retry may help.
"""
import abc


class ObjectStore(abc.ABC):
    """A flat object store. Implementations must be thread-safe."""

    kind = "abstract"

    @abc.abstractmethod
    def put(self, name: str, data: bytes | memoryview) -> None:
        """Store ``data`` under ``name`` atomically (all or nothing), replacing any object.

        :raise InvalidContainer: if ``name`` breaks the naming rules.
        :raise StoreError: if the store fails.
        """

    @abc.abstractmethod
    def get(self, name: str) -> bytes:
        """The bytes of ``name``.

        :raise NotFound: if it does not exist.
        :raise StoreError: if the store fails.
        """

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name``; a missing object is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted names that start with ``prefix``."""

    @abc.abstractmethod
    def exists(self, name: str) -> bool:
        """Whether object ``name`` exists."""

    def purge_incomplete(self, prefix: str) -> None:  # noqa: B027 - a no-op is the default
        """Remove leftovers of puts that never completed (a writer killed mid-put)
        under ``prefix``. Only call it when no writer can still be working there.

        Stores whose puts leave nothing behind keep this no-op.
        """

    def describe(self) -> str:
        """Short description for logs (no secrets)."""
        return self.kind
