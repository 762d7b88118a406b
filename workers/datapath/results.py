"""What backup, restore and verify return to their caller (the job manager).

Byte counts are *logical* (volume bytes) unless the name says *stored* (bytes
of objects in the store, after compression).
"""
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from .index import StoredObject
from .refs import BackupRef


@dataclass
class BackupResult:
    """A completed backup: where it is, what it cost, and the manifest written.

    ``referenced_objects``: every distinct object the backup's index objects
    reference (its new packs, the parent packs it reuses) and its own index
    objects -- not the root manifest; ``new_objects``: the subset this backup
    wrote (what a failed or cancelled backup would have left).
    """

    container: str
    prefix: str
    object_count: int           # new objects (packs, index objects) + the manifest
    stored_bytes: int           # new objects + the manifest, as stored
    logical_bytes: int          # size of the volume the backup represents
    incremental: bool
    message: str | None         # why a full backup was taken instead of an incremental
    manifest: dict[str, Any]    # the JSON body written to the store
    data_bytes: int = 0         # non-zero bytes read and digested
    changed_bytes: int = 0      # bytes of blocks stored by this backup (before compression)
    elapsed_s: float = 0.0
    referenced_objects: list[StoredObject] = field(default_factory=list)
    new_objects: list[StoredObject] = field(default_factory=list)

    @property
    def ref(self) -> BackupRef:
        """Where the backup lives."""
        return BackupRef(self.container, self.prefix)


@dataclass
class RestoreResult:
    """A completed restore (a failed one raises instead)."""

    ok: bool
    bytes_written: int          # data bytes written (non-zero blocks)
    zeroed_bytes: int           # bytes made zero (0 when target_is_zeroed)
    objects_read: int
    stored_bytes_read: int
    blocks_verified: int
    chain: list[BackupRef] = field(default_factory=list)   # newest first
    elapsed_s: float = 0.0


@dataclass
class VerifyResult:
    """The outcome of re-reading a backup chain; damage is listed in ``problems``."""

    ok: bool
    objects_checked: int
    stored_bytes_checked: int
    logical_bytes_checked: int
    blocks_checked: int
    chain: list[BackupRef] = field(default_factory=list)   # newest first
    problems: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
