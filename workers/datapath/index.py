"""Format version 2: a root manifest, index objects and shared packs (docs/format.md).

Every version-2 backup is a *logical full*: its root manifest lists its index
objects, and the index objects together say where every non-zero block of the
volume is. A block may lie in a pack an earlier backup of the volume wrote, so
backups share data without depending on each other's manifests, and any backup
can be deleted by removing its root manifest and the objects no other backup
references.

Objects under ``<container>/<prefix>/``:

* ``data-NNNNNNNN`` -- packs, as in version 1 (concatenated compressed frames, no
  frame crossing a segment). A backup writes its new packs under its own prefix.
* ``index-NNNNNNNN`` -- index objects, each covering a contiguous, segment-aligned
  block range of the volume, written while the backup runs: a local object table
  (:class:`StoredObject`, full store names) and sorted, non-overlapping
  :class:`Extent` s, each the used sub-range of one frame.
* ``manifest.json`` -- the root, written last: the shared fields of version 1
  and ``index`` (:class:`IndexEntry` per index object, in volume order).

Root and index objects use version 1's checksum encoding
(:func:`.format.encode_manifest`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from typing import NamedTuple

from .errors import InvalidBackup
from .errors import InvalidContainer
from .format import DIGEST_LEN
from .format import FORMAT
from .format import ManifestFields
from .format import check_header
from .format import decode_digests
from .names import validate_object_name
from .refs import BackupRef
from .refs import object_name

VERSION = 2
INDEX_NAME_FORMAT = "index-{:08d}"
INDEX_KIND = "index"


@dataclass(frozen=True)
class StoredObject:
    """An object a backup references: full store name, size in bytes, SHA-256 (hex; None
    for a pack written without one: its blocks' digests check what a reader uses)."""

    name: str
    size: int
    sha256: str | None

    def to_json(self) -> dict[str, Any]:
        """The object table entry of an index object."""
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


class Extent(NamedTuple):
    """Blocks [first_block, first_block + block_count) of the volume, held by the frame at
    ``pack_offset`` of object ``obj`` (an index into the index object's table), which
    compresses blocks [frame_first_block, frame_first_block + frame_block_count).

    ``digests``: base64 of the SHA-256 of each of the extent's blocks (not the frame's).
    On the wire an extent is the JSON list of its fields.
    """

    obj: int
    pack_offset: int
    compressed_length: int
    frame_first_block: int
    frame_block_count: int
    first_block: int
    block_count: int
    digests: str

    @property
    def end_block(self) -> int:
        """The block number just past the extent."""
        return self.first_block + self.block_count

    def block_digests(self, where: str) -> bytes:
        """The ``block_count`` raw digests of the extent.

        :raise InvalidBackup: if they are not base64 or not one per block.
        """
        digests = decode_digests(self.digests)
        if len(digests) != self.block_count * DIGEST_LEN:
            raise InvalidBackup(f"{where}: extent digest list has the wrong length")
        return digests


class IndexEntry(NamedTuple):
    """The root manifest's entry of one index object: its name within the backup's
    prefix, size, SHA-256 and the block range it covers."""

    name: str
    size: int
    sha256: str
    first_block: int
    block_count: int

    def to_json(self) -> dict[str, Any]:
        """The root manifest's ``index`` entry."""
        return {"name": self.name, "size": self.size, "sha256": self.sha256,
                "first_block": self.first_block, "block_count": self.block_count}


@dataclass
class IndexObject:
    """One index object: its block range, object table and extents."""

    first_block: int
    block_count: int
    objects: list[StoredObject]
    extents: list[Extent]

    def to_body(self, ref: BackupRef, backup_id: str | None) -> dict[str, Any]:
        """The JSON object as the store holds it."""
        return {"format": FORMAT, "version": VERSION, "kind": INDEX_KIND,
                "container": ref.container, "prefix": ref.prefix, "backup_id": backup_id,
                "first_block": self.first_block, "block_count": self.block_count,
                "objects": [o.to_json() for o in self.objects],
                "extents": [list(e) for e in self.extents]}


@dataclass
class RootManifest(ManifestFields):
    """A version-2 root manifest with typed fields."""

    index: list[IndexEntry]

    @property
    def format_version(self) -> int:
        """The format version of this manifest."""
        return VERSION

    def index_object_name(self, entry: IndexEntry) -> str:
        """Full store name of one of this backup's index objects."""
        return object_name(self.ref, entry.name)

    def to_body(self) -> dict[str, Any]:
        """The JSON object of this root manifest, as the store holds it."""
        return self._to_body(VERSION, index=[e.to_json() for e in self.index])


def _check_object_entry(entry: Any, where: str, *, relative: bool
                        ) -> tuple[str, int, str | None]:
    """(name, size, sha256) of an object entry, checked. A root's index entry (relative
    name) must have a SHA-256; an index object's table entry may have none (a pack)."""
    name, size, sha256 = entry["name"], entry["size"], entry["sha256"]
    validate_object_name(name)
    bad_digest = (relative or sha256 is not None) and \
        (not isinstance(sha256, str) or len(sha256) != 64)
    if (relative and "/" in name) or not isinstance(size, int) or size < 0 or bad_digest:
        raise InvalidBackup(f"{where}: bad object entry {entry!r}")
    return name, size, sha256


def check_root(body: dict[str, Any], ref: BackupRef) -> RootManifest:
    """The typed root manifest of version-2 backup ``ref``, its structure checked: the
    shared fields, and index entries that are sorted, non-overlapping, segment-aligned
    and inside the volume.

    :raise InvalidBackup: naming the first thing that is wrong.
    """
    where = f"manifest of {ref.container}/{ref.prefix}"
    header = check_header(body, ref, VERSION)
    blocks_per_segment = header.segment_size // header.block_size
    try:
        index = []
        position = 0
        for entry in body["index"]:
            name, size, sha256 = _check_object_entry(entry, where, relative=True)
            first_block, block_count = entry["first_block"], entry["block_count"]
            if not (isinstance(first_block, int) and isinstance(block_count, int)) \
                    or first_block < position or block_count <= 0 \
                    or first_block % blocks_per_segment \
                    or first_block + block_count > header.block_count:
                raise InvalidBackup(f"{where}: index entry {name!r} has a bad block range")
            position = first_block + block_count
            index.append(IndexEntry(name, size, sha256, first_block, block_count))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InvalidContainer):
            raise InvalidBackup(f"{where}: {e}") from None
        raise InvalidBackup(f"{where}: malformed manifest ({e!r})") from None
    return RootManifest(**header.fields(body, ref), index=index)


def check_index(body: dict[str, Any], root: RootManifest, entry: IndexEntry) -> IndexObject:
    """The typed index object ``entry`` of ``root``, its structure checked: it belongs to
    the backup and covers the entry's range; every extent lies inside that range, after
    the previous one, inside one segment, inside its frame, and its frame inside its
    object. Digests are decoded (and their length checked) when an extent is used.

    :raise InvalidBackup: naming the object and the first thing that is wrong.
    """
    name = root.index_object_name(entry)
    try:
        if body.get("format") != FORMAT or body.get("version") != VERSION \
                or body.get("kind") != INDEX_KIND:
            raise InvalidBackup(f"{name}: not a version-{VERSION} index object")
        if (body.get("container"), body.get("prefix")) != (root.container, root.prefix) \
                or (body.get("first_block"), body.get("block_count")) \
                != (entry.first_block, entry.block_count):
            raise InvalidBackup(f"{name}: index object belongs elsewhere "
                                f"({body.get('container')}/{body.get('prefix')} blocks "
                                f"{body.get('first_block')}+{body.get('block_count')})")
        objects = [StoredObject(*_check_object_entry(o, name, relative=False))
                   for o in body["objects"]]
        blocks_per_segment = root.blocks_per_segment
        end = entry.first_block + entry.block_count
        position = entry.first_block
        extents = []
        for item in body["extents"]:
            extent = Extent(*item)
            (obj, pack_offset, compressed_length, frame_first, frame_count,
             first_block, block_count, digests) = extent
            if not all(isinstance(v, int) for v in extent[:7]) or not isinstance(digests, str):
                raise InvalidBackup(f"{name}: malformed extent {item[:7]}")
            if not (0 <= obj < len(objects)) or pack_offset < 0 or compressed_length < 0 \
                    or pack_offset + compressed_length > objects[obj].size:
                raise InvalidBackup(f"{name}: extent {item[:7]} points outside its object")
            frame_end = frame_first + frame_count
            if frame_count <= 0 or frame_first < 0 or frame_end > root.block_count \
                    or frame_first // blocks_per_segment \
                    != (frame_end - 1) // blocks_per_segment:
                raise InvalidBackup(f"{name}: extent {item[:7]} has a bad frame range")
            if block_count <= 0 or first_block < position \
                    or first_block + block_count > end \
                    or first_block < frame_first or first_block + block_count > frame_end:
                raise InvalidBackup(f"{name}: extent {item[:7]} has a bad block range")
            position = first_block + block_count
            extents.append(extent)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InvalidContainer):
            raise InvalidBackup(f"{name}: {e}") from None
        raise InvalidBackup(f"{name}: malformed index object ({e!r})") from None
    return IndexObject(entry.first_block, entry.block_count, objects, extents)
