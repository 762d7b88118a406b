"""A backup's objects in the store: reading its manifest and chain, writing a pack,
deleting it.

A *chain* is a backup and the backups it builds on, newest first, down to a
full backup. Reading refuses chains deeper than ``MAX_READ_CHAIN``, chains that
loop and chains whose members disagree on their geometry.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from .errors import IntegrityError
from .errors import InvalidBackup
from .errors import NotFound
from .format import MANIFEST_NAME
from .format import Manifest
from .format import PackObject
from .format import check_manifest
from .format import decode_manifest
from .refs import BackupRef
from .refs import backup_prefix
from .refs import checked_ref
from .refs import object_name

if TYPE_CHECKING:  # the stores package imports this one's errors: no import cycle at run time
    from workers.stores import ObjectStore

MAX_READ_CHAIN = 1000


def read_manifest(store: ObjectStore, ref: tuple[str, str]) -> Manifest:
    """The checked manifest of backup ``ref``.

    :raise InvalidContainer: if ``ref`` breaks the naming rules.
    :raise IntegrityError: if the manifest is missing or damaged.
    :raise InvalidBackup: if it is malformed or of an unknown version.
    :raise StoreError: if the store fails.
    """
    ref = checked_ref(ref)
    name = object_name(ref, MANIFEST_NAME)
    try:
        raw = store.get(name)
    except NotFound:
        raise IntegrityError(f"manifest {name!r} is missing") from None
    return check_manifest(decode_manifest(raw, name), ref)


def load_chain(store: ObjectStore, ref: tuple[str, str]) -> list[Manifest]:
    """Manifests from ``ref`` down to its full backup (newest first).

    :raise InvalidBackup: if the chain loops, is too deep, or its members disagree
        on backup id, depth, block size, segment size or volume size.
    :raise IntegrityError: if a manifest is missing or damaged.
    """
    chain: list[Manifest] = []
    seen: set[BackupRef] = set()
    current = BackupRef(*ref)
    expected_backup_id = None
    while True:
        if current in seen:
            raise InvalidBackup(f"backup chain loops at {current.container}/{current.prefix}")
        seen.add(current)
        manifest = read_manifest(store, current)
        if expected_backup_id is not None and manifest.backup_id != expected_backup_id:
            raise InvalidBackup(f"{current.container}/{current.prefix} holds backup "
                                f"{manifest.backup_id!r}, its child expects "
                                f"{expected_backup_id!r}")
        if chain:
            child = chain[-1]
            if manifest.chain_depth != child.chain_depth - 1:
                raise InvalidBackup("chain depth mismatch between "
                                    f"{child.ref} and {current}")
            for key in ("block_size", "segment_size", "size_bytes"):
                if getattr(manifest, key) != getattr(child, key):
                    raise InvalidBackup(f"{key} differs between {child.ref} and {current}")
        chain.append(manifest)
        if len(chain) > MAX_READ_CHAIN:
            raise InvalidBackup(f"backup chain deeper than {MAX_READ_CHAIN}")
        if manifest.parent is None:
            return chain
        current = manifest.parent.ref
        expected_backup_id = manifest.parent.backup_id


def put_pack(store: ObjectStore, ref: BackupRef, name: str, data: bytes) -> PackObject:
    """Store pack ``name`` of backup ``ref``; returns its manifest entry.

    :raise StoreError: if the store fails.
    """
    digest = hashlib.sha256(data).hexdigest()
    store.put(object_name(ref, name), data)
    return PackObject(name, len(data), digest)


def delete_backup(store: ObjectStore, ref: BackupRef) -> None:
    """Delete every object of backup ``ref``, and what interrupted puts left there.

    The manifest goes first, so an interrupted delete never leaves a backup
    that looks complete but is not. Deleting a missing backup is not an error.

    :raise StoreError: if the store fails.
    """
    prefix = backup_prefix(ref)
    # Only the objects directly under the backup's own prefix: another tenant's container
    # may be named "<this container>/backup_<this id>", and its objects lie below ours.
    names = [n for n in store.list(prefix) if "/" not in n[len(prefix):]]
    manifest_name = object_name(ref, MANIFEST_NAME)
    if manifest_name in names:
        store.delete(manifest_name)
    for name in names:
        if name != manifest_name:
            store.delete(name)
    store.purge_incomplete(prefix)


def delete_quietly(store: ObjectStore, ref: BackupRef) -> None:
    """Best-effort delete_backup after a failure: the original error is the one to report."""
    try:
        delete_backup(store, ref)
    except Exception:
        pass
