"""Where a backup lives in an object store.

A backup is identified by a :class:`BackupRef`: its *container* (a ``/``-separated
path) and its *prefix* (``backup_<backup id>``). Every object of the backup -- the
packs and the manifest -- is named ``<container>/<prefix>/<name>``, so deleting a
backup is deleting one prefix, and the location is known before any byte is
written (the job manager records it first, so a crashed backup can be cleaned up).
"""
from typing import NamedTuple

from .names import validate_container
from .names import validate_identifier
from .names import validate_object_name


class BackupRef(NamedTuple):
    """The location of one backup: ``<container>/<prefix>/`` in the store."""

    container: str
    prefix: str


def checked_ref(ref: tuple[str, str]) -> BackupRef:
    """``ref`` as a BackupRef whose container and prefix are valid names.

    :raise InvalidContainer: if either part breaks the naming rules.
    """
    container, prefix = ref
    return BackupRef(validate_container(container), validate_object_name(prefix))


def object_name(ref: BackupRef, name: str) -> str:
    """Full store name of object ``name`` (a pack or the manifest) of backup ``ref``."""
    return f"{ref.container}/{ref.prefix}/{name}"


def backup_prefix(ref: BackupRef) -> str:
    """The store prefix that holds every object of ``ref`` (ends with ``/``)."""
    return f"{ref.container}/{ref.prefix}/"


def default_container(backup_id: str) -> str:
    """The container of a backup whose caller chose none: sharded by the id's first bytes.

    ``1234abcd`` lives in ``12/34/1234abcd``, so no directory of a POSIX store
    holds more than 256 entries per level however many backups there are.
    """
    validate_identifier(backup_id, "backup_id")
    if len(backup_id) >= 4:
        return f"{backup_id[0:2]}/{backup_id[2:4]}/{backup_id}"
    return backup_id


def ref_for(backup_id: str, container: str | None = None) -> BackupRef:
    """Where backup ``backup_id`` lives (known before any byte is written).

    :raise InvalidContainer: if the id or the container breaks the naming rules.
    """
    validate_identifier(backup_id, "backup_id")
    container = default_container(backup_id) if container is None else container
    return BackupRef(validate_container(container), f"backup_{backup_id}")
