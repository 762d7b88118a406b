"""Exception tree of the backup data path.

Everything the data path raises on purpose derives from :class:`DataPathError`.
Store failures carry a ``kind`` (restic's split: not found, permanent,
transient) so that the task layer can decide to retry without parsing messages.
"""


class DataPathError(Exception):
    """Base class of every data-path error."""


class BackupCancelled(DataPathError):
    """The caller's ``cancelled()`` callback returned True."""


class IntegrityError(DataPathError):
    """Stored data does not match its digest, or an object is missing or truncated."""


class InvalidBackup(DataPathError):
    """A manifest is malformed, of an unknown version, or its chain is unusable."""


class InvalidContainer(DataPathError, ValueError):
    """A container or object name breaks the naming rules."""


class VolumeIOError(DataPathError):
    """Reading the source volume or writing the restore target failed."""


class StoreError(DataPathError):
    """An object store operation failed.

    ``kind`` is one of ``"not_found"``, ``"permanent"`` or ``"transient"``
    (transient errors may succeed when retried).
    """

    kind = "permanent"

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class NotFound(StoreError):
    """The object does not exist."""

    kind = "not_found"


class PermanentStoreError(StoreError):
    """The store refused the operation; retrying will not help."""

    kind = "permanent"


class TransientStoreError(StoreError):
    """The store is unreachable, busy or full for now; the operation may succeed later."""

    kind = "transient"
