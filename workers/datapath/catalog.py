"""A backup's objects in the store: reading its manifest (either version), its index
objects and (version 1) its chain, writing a pack, listing what it references,
deleting it.

A *chain* (version 1 only) is a backup and the backups it builds on, newest
first, down to a full backup. Reading refuses chains deeper than
``MAX_READ_CHAIN``, chains that loop and chains whose members disagree on their
geometry. A version-2 backup needs no chain: its own index objects describe the
whole volume.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import IntegrityError
from .errors import InvalidBackup
from .errors import NotFound
from .format import MANIFEST_NAME
from .format import Manifest
from .format import check_manifest
from .format import decode_manifest
from .index import IndexEntry
from .index import IndexObject
from .index import RootManifest
from .index import StoredObject
from .index import check_index
from .index import check_root
from .refs import BackupRef
from .refs import backup_prefix
from .refs import checked_ref
from .refs import object_name

if TYPE_CHECKING:  # the stores package imports this one's errors: no import cycle at run time
    from workers.stores import ObjectStore

MAX_READ_CHAIN = 1000


def _read_manifest_raw(store: ObjectStore, ref: BackupRef) -> tuple[bytes, str]:
    name = object_name(ref, MANIFEST_NAME)
    try:
        return store.get(name), name
    except NotFound:
        raise IntegrityError(f"manifest {name!r} is missing") from None


def _check_any(body: dict, ref: BackupRef) -> Manifest | RootManifest:
    if body.get("version") == 1:
        return check_manifest(body, ref)
    return check_root(body, ref)


def read_manifest(store: ObjectStore, ref: tuple[str, str]) -> Manifest | RootManifest:
    """The checked manifest of backup ``ref``: a version-1 :class:`Manifest` or a
    version-2 :class:`RootManifest` (``format_version`` tells which).

    :raise InvalidContainer: if ``ref`` breaks the naming rules.
    :raise IntegrityError: if the manifest is missing or damaged.
    :raise InvalidBackup: if it is malformed or of an unknown version.
    :raise StoreError: if the store fails.
    """
    ref = checked_ref(ref)
    raw, name = _read_manifest_raw(store, ref)
    return _check_any(decode_manifest(raw, name), ref)


def read_index(store: ObjectStore, root: RootManifest, entry: IndexEntry) -> IndexObject:
    """Index object ``entry`` of ``root``, its size, SHA-256, checksum and structure checked.

    :raise IntegrityError: if it is missing or damaged (naming it).
    :raise InvalidBackup: if it is malformed.
    :raise StoreError: if the store fails.
    """
    name = root.index_object_name(entry)
    raw = get_checked(store, StoredObject(name, entry.size, entry.sha256))
    return check_index(decode_manifest(raw, name), root, entry)


def get_checked(store: ObjectStore, obj: StoredObject) -> bytes:
    """The bytes of ``obj``, once their size and SHA-256 are checked (the size only for
    an object recorded without a digest: a pack, whose blocks carry their own).

    :raise IntegrityError: if it is missing, truncated or damaged.
    :raise StoreError: if the store fails.
    """
    try:
        data = store.get(obj.name)
    except NotFound:
        raise IntegrityError(f"object {obj.name!r} is missing") from None
    if len(data) != obj.size:
        raise IntegrityError(f"object {obj.name!r} is {len(data)} bytes, expected {obj.size} "
                             "(truncated or damaged)")
    if obj.sha256 is not None and hashlib.sha256(data).hexdigest() != obj.sha256:
        raise IntegrityError(f"object {obj.name!r} does not match its SHA-256 digest")
    return data


@dataclass(frozen=True)
class BackupObjects:
    """What a stored backup references (:func:`referenced_objects`).

    Version 2: every distinct object its index objects reference (its own packs and
    the packs of earlier backups it shares) and its own index objects, not the root
    manifest. Version 1: the backup's own packs and its manifest (a version-1 backup
    shares nothing; its parents' objects are theirs).
    """

    format_version: int
    objects: tuple[StoredObject, ...]


def referenced_objects(store: ObjectStore, ref: tuple[str, str]) -> BackupObjects:
    """What backup ``ref`` references, read from the store alone (import and rebuild).

    Memory: one index object at a time, plus the result.

    :raise IntegrityError: if the manifest or an index object is missing or damaged.
    :raise InvalidBackup: if one is malformed.
    :raise StoreError: if the store fails.
    """
    ref = checked_ref(ref)
    raw, name = _read_manifest_raw(store, ref)
    manifest = _check_any(decode_manifest(raw, name), ref)
    if manifest.format_version == 1:
        own = [StoredObject(object_name(ref, o.name), o.size, o.sha256)
               for o in manifest.objects]
        own.append(StoredObject(name, len(raw), hashlib.sha256(raw).hexdigest()))
        return BackupObjects(1, tuple(own))
    found: dict[str, StoredObject] = {}
    for entry in manifest.index:
        for obj in read_index(store, manifest, entry).objects:
            found.setdefault(obj.name, obj)
        own_index = StoredObject(manifest.index_object_name(entry), entry.size, entry.sha256)
        found.setdefault(own_index.name, own_index)
    return BackupObjects(2, tuple(found.values()))


def load_chain(store: ObjectStore, ref: tuple[str, str]) -> list[Manifest]:
    """Version-1 manifests from ``ref`` down to its full backup (newest first).

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
        if manifest.format_version != 1:
            raise InvalidBackup(f"{current.container}/{current.prefix} is a version-"
                                f"{manifest.format_version} backup, not part of a "
                                "version-1 chain")
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


def put_object(store: ObjectStore, ref: BackupRef, name: str,
               data: bytes | list[bytes], *, digest: bool = True) -> StoredObject:
    """Store object ``name`` (a pack or an index object) of backup ``ref``: ``data`` or
    the concatenation of a list of parts (the frames of a pack: never joined in memory
    where the store can write them one by one).

    With ``digest`` false (packs) no SHA-256 of the whole object is computed: the
    per-block digests of the index check every byte a reader uses, so a second hash
    of the compressed bytes would only cost a tenth of a full backup's CPU time.

    :raise StoreError: if the store fails.
    """
    parts = data if isinstance(data, list) else [data]
    sha256 = None
    if digest:
        hasher = hashlib.sha256()
        for part in parts:
            hasher.update(part)
        sha256 = hasher.hexdigest()
    full = object_name(ref, name)
    store.put_parts(full, parts)
    return StoredObject(full, sum(len(p) for p in parts), sha256)


def delete_manifest(store: ObjectStore, ref: BackupRef) -> None:
    """Remove only the (root) manifest of ``ref``: the backup is no longer visible; its
    objects stay for whoever else references them. Idempotent.

    :raise StoreError: if the store fails.
    """
    store.delete(object_name(ref, MANIFEST_NAME))


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
