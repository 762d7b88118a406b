"""Exception tree of the backup data path.

Everything the data path raises on purpose derives from :class:`DataPathError`.
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


class StoreError(DataPathError):
    """An object store operation failed.

    ``kind`` is one of ``"not_found"``, ``"permanent"`` or ``"transient"``
    (transient errors may succeed when retried).
    """

    kind = "permanent"

    def __init__(self, message, *, name=None):
        super().__init__(message)
        self.name = name


class NotFound(StoreError):
    kind = "not_found"


class PermanentStoreError(StoreError):
    kind = "permanent"


class TransientStoreError(StoreError):
    kind = "transient"
