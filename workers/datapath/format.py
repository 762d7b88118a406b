"""The backup format: what both versions share, and version 1 (packs, frames, manifest).

Version 2 (:mod:`.index`, docs/format.md) is what backups are written as now;
version 1 is still read, verified and deleted. This module describes version 1:

Every object of one backup lives under ``<container>/<prefix>/`` (see :mod:`.refs`):

* ``data-NNNNNNNN`` -- *packs*: a concatenation of compressed *frames*. A frame
  is the compression of a run of consecutive non-zero *blocks* (``block_size``
  bytes of the volume, the digest granularity) that all lie inside one *segment*
  (``segment_size`` bytes of the volume, aligned), so no frame spans two of the
  tasks the backup pipeline cuts the volume into.
* ``manifest.json`` -- written last, so a backup without one is incomplete; a
  JSON document followed by a line ``#sha256:<hex of the JSON bytes>``. It
  records the format and version, the block size, the compression, the volume
  size and metadata, the parent backup (container, prefix, backup id) and chain
  depth, every pack (:class:`PackObject`), every frame (:class:`Frame`) and, for
  incrementals, the block runs that were data in the parent and are zero now
  (:class:`ZeroedRun`).

A block absent from every manifest of a chain is zero. A full backup lists
every non-zero block; an incremental lists only the blocks whose digest differs
from its parent's state (and the blocks that became zero), so restore applies
the chain newest-wins.

On the wire a frame is the JSON list ``[pack index, offset in pack, compressed
length, first block, block count, base64 of the blocks' SHA-256 digests]`` and
a zeroed run ``[first block, block count]``; both types here are NamedTuples,
which ``json`` writes as exactly those lists.
"""
import base64
import binascii
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import NamedTuple

from .codec import COMPRESSIONS
from .errors import IntegrityError
from .errors import InvalidBackup
from .errors import InvalidContainer
from .names import validate_container
from .names import validate_object_name
from .refs import BackupRef

FORMAT = "orchestrator.chunked-backup"
FORMAT_VERSION = 2            # what backups are written as (see .index)
SUPPORTED_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
DIGEST = "sha256"
DIGEST_LEN = 32
PACK_NAME_FORMAT = "data-{:08d}"

_CHECKSUM_TAG = b"\n#sha256:"


class Frame(NamedTuple):
    """One compressed run of blocks inside a pack."""

    pack_index: int            # index into the manifest's objects
    pack_offset: int           # where the frame starts in the pack
    compressed_length: int
    first_block: int           # volume block number of the first block
    block_count: int
    digests: str               # base64 of the blocks' SHA-256 digests, concatenated

    @property
    def end_block(self) -> int:
        """The block number just past the frame."""
        return self.first_block + self.block_count

    def block_digests(self, where: str = "") -> bytes:
        """The ``block_count`` digests, ``DIGEST_LEN`` bytes each, concatenated.

        :param where: what the frame belongs to, for the error message.
        :raise InvalidBackup: if they are not base64 or not one per block.
        """
        digests = decode_digests(self.digests)
        if len(digests) != self.block_count * DIGEST_LEN:
            raise InvalidBackup(f"{where}: frame digest list has the wrong length" if where
                                else "frame digest list has the wrong length")
        return digests


class ZeroedRun(NamedTuple):
    """Blocks that held data in the parent backup and are zero in this one."""

    first_block: int
    block_count: int

    def by_segment(self, blocks_per_segment: int) -> Iterator[tuple[int, int, int]]:
        """The run cut at segment boundaries: (segment, index in it, block count)."""
        block, end = self.first_block, self.first_block + self.block_count
        while block < end:
            segment, index = divmod(block, blocks_per_segment)
            count = min(end - block, blocks_per_segment - index)
            yield segment, index, count
            block += count


@dataclass(frozen=True)
class PackObject:
    """A pack as the manifest lists it: name within the prefix, size, SHA-256 (hex)."""

    name: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``objects`` entry."""
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class ParentLink:
    """The backup an incremental builds on."""

    container: str
    prefix: str
    backup_id: str | None

    @property
    def ref(self) -> BackupRef:
        """Where the parent lives."""
        return BackupRef(self.container, self.prefix)

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``parent`` entry."""
        return {"container": self.container, "prefix": self.prefix,
                "backup_id": self.backup_id}


@dataclass(frozen=True)
class BackupStats:
    """What a backup read and wrote (informational; restore does not use it)."""

    data_bytes: int            # non-zero bytes read and digested
    changed_bytes: int         # bytes of the blocks stored, before compression
    pack_bytes: int            # bytes of the packs, as stored

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``stats`` entry."""
        return {"data_bytes": self.data_bytes, "changed_bytes": self.changed_bytes,
                "pack_bytes": self.pack_bytes}


class VolumeGeometry:
    """Block arithmetic of a manifest with ``size_bytes``, ``block_size`` and
    ``segment_size`` fields (both format versions)."""

    size_bytes: int
    block_size: int
    segment_size: int
    container: str
    prefix: str

    @property
    def ref(self) -> BackupRef:
        """Where this backup lives."""
        return BackupRef(self.container, self.prefix)

    @property
    def block_count(self) -> int:
        """Blocks of the volume (the last one may be partial)."""
        return -(-self.size_bytes // self.block_size)

    @property
    def blocks_per_segment(self) -> int:
        """Blocks in one segment."""
        return self.segment_size // self.block_size

    def block_range_bytes(self, first_block: int, block_count: int) -> int:
        """Volume bytes of a run of blocks (the volume's last block may be partial)."""
        start = first_block * self.block_size
        return min((first_block + block_count) * self.block_size, self.size_bytes) - start


@dataclass
class ManifestFields(VolumeGeometry):
    """The typed fields of a manifest of either format version (:class:`Manifest`,
    :class:`.index.RootManifest`); ``body`` is the JSON object it was read from or written
    as."""

    backup_id: str | None
    volume_id: str | None
    created_at: str | None
    container: str
    prefix: str
    size_bytes: int
    block_size: int
    segment_size: int
    compression: str
    compression_level: int | None
    incremental: bool
    parent: ParentLink | None
    chain_depth: int
    volume_meta: dict[str, Any]
    stats: BackupStats | None = field(kw_only=True)
    # The name the service records these backups under (Cinder's backup "service"); the
    # service hands it to the driver (orchestrator.operations.backups.DRIVER_ID).
    driver: str | None = field(default=None, kw_only=True)
    body: dict[str, Any] = field(default_factory=dict, repr=False, compare=False,
                                 kw_only=True)

    def _to_body(self, version: int, **own: Any) -> dict[str, Any]:
        """The JSON object of this manifest: the shared fields, ``own`` (the version's
        fields) and ``stats``."""
        return {
            "format": FORMAT, "version": version, "driver": self.driver,
            "backup_id": self.backup_id, "volume_id": self.volume_id,
            "created_at": self.created_at,
            "container": self.container, "prefix": self.prefix,
            "size_bytes": self.size_bytes, "block_size": self.block_size,
            "segment_size": self.segment_size,
            "digest": DIGEST, "compression": self.compression,
            "compression_level": self.compression_level,
            "incremental": self.incremental,
            "parent": self.parent.to_json() if self.parent is not None else None,
            "chain_depth": self.chain_depth, "volume_meta": self.volume_meta,
            **own,
            "stats": self.stats.to_json() if self.stats is not None else None,
        }


@dataclass
class Manifest(ManifestFields):
    """A version-1 manifest with typed fields."""

    objects: list[PackObject]
    frames: list[Frame]
    zeroed: list[ZeroedRun]

    @property
    def format_version(self) -> int:
        """The format version of this manifest."""
        return 1

    def to_body(self) -> dict[str, Any]:
        """The JSON object of this manifest, as the store holds it."""
        return self._to_body(1, objects=[o.to_json() for o in self.objects],
                             frames=list(self.frames), zeroed=list(self.zeroed))


def encode_digests(digests: bytes) -> str:
    """Digests as the manifest holds them (base64)."""
    return base64.b64encode(digests).decode("ascii")


def decode_digests(text: str) -> bytes:
    """The digests a manifest holds as base64.

    :raise InvalidBackup: if ``text`` is not valid base64.
    """
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidBackup("manifest holds malformed base64 digests") from None


def encode_manifest(body: dict[str, Any]) -> bytes:
    """The bytes of a manifest object: compact, key-sorted JSON and its checksum line.

    :raise TypeError: if ``body`` holds something JSON cannot represent.
    """
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return data + _CHECKSUM_TAG + hashlib.sha256(data).hexdigest().encode() + b"\n"


def decode_manifest(raw: bytes, name: str = "manifest") -> dict[str, Any]:
    """The JSON object of a manifest object, its checksum checked.

    :raise IntegrityError: if the object is truncated, damaged or not JSON.
    :raise InvalidBackup: if the JSON is not an object.
    """
    tag_at = raw.rfind(_CHECKSUM_TAG)
    if tag_at < 0 or not raw.endswith(b"\n"):
        raise IntegrityError(f"{name}: truncated or damaged (no checksum line)")
    data = raw[:tag_at]
    want = raw[tag_at + len(_CHECKSUM_TAG):-1].decode("ascii", "replace")
    if hashlib.sha256(data).hexdigest() != want:
        raise IntegrityError(f"{name}: checksum mismatch")
    try:
        body = json.loads(data)
    except ValueError as e:
        raise IntegrityError(f"{name}: not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise InvalidBackup(f"{name}: manifest is not a JSON object")
    return body


class ManifestHeader(NamedTuple):
    """The fields both format versions share, checked (see :func:`check_header`)."""

    size_bytes: int
    block_size: int
    segment_size: int
    parent: ParentLink | None
    chain_depth: int
    stats: BackupStats | None

    @property
    def block_count(self) -> int:
        """Blocks of the volume (the last one may be partial)."""
        return -(-self.size_bytes // self.block_size)

    def fields(self, body: dict[str, Any], ref: BackupRef) -> dict[str, Any]:
        """The :class:`ManifestFields` of backup ``ref`` whose manifest is ``body``
        (keyword arguments)."""
        return dict(
            backup_id=body.get("backup_id"), volume_id=body.get("volume_id"),
            created_at=body.get("created_at"), container=ref.container, prefix=ref.prefix,
            size_bytes=self.size_bytes, block_size=self.block_size,
            segment_size=self.segment_size, compression=body["compression"],
            compression_level=body.get("compression_level"),
            incremental=bool(body.get("incremental", self.parent is not None)),
            parent=self.parent, chain_depth=self.chain_depth,
            volume_meta=body.get("volume_meta") or {}, stats=self.stats,
            driver=body.get("driver"), body=body)


def check_header(body: dict[str, Any], ref: BackupRef, version: int) -> ManifestHeader:
    """The shared fields of a manifest of format ``version`` of backup ``ref``, checked:
    format and version, block and segment geometry, digest and compression, that it
    belongs to ``ref``, and that parent and chain depth agree.

    :raise InvalidBackup: naming the first thing that is wrong.
    """
    where = f"manifest of {ref.container}/{ref.prefix}"
    if body.get("format") != FORMAT:
        raise InvalidBackup(f"{where}: unknown format {body.get('format')!r}")
    if body.get("version") != version:
        raise InvalidBackup(f"{where}: unsupported manifest version {body.get('version')!r} "
                            f"(this driver reads {list(SUPPORTED_VERSIONS)})")
    try:
        block_size = body["block_size"]
        segment_size = body["segment_size"]
        size_bytes = body["size_bytes"]
        if not (isinstance(block_size, int) and block_size >= 512 and block_size % 512 == 0):
            raise InvalidBackup(f"{where}: bad block_size {block_size!r}")
        if not (isinstance(segment_size, int) and segment_size >= block_size
                and segment_size % block_size == 0):
            raise InvalidBackup(f"{where}: bad segment_size {segment_size!r}")
        if not (isinstance(size_bytes, int) and size_bytes >= 0):
            raise InvalidBackup(f"{where}: bad size_bytes {size_bytes!r}")
        if body.get("digest") not in (DIGEST, "hmac-sha256"):
            raise InvalidBackup(f"{where}: unknown digest {body.get('digest')!r}")
        if body.get("compression") not in COMPRESSIONS:
            raise InvalidBackup(f"{where}: unknown compression {body.get('compression')!r}")
        if (body.get("container"), body.get("prefix")) != (ref.container, ref.prefix):
            raise InvalidBackup(f"{where}: manifest belongs to "
                                f"{body.get('container')}/{body.get('prefix')}")
        parent_entry = body.get("parent")
        parent = None
        if parent_entry is not None:
            parent = ParentLink(validate_container(parent_entry["container"]),
                                validate_object_name(parent_entry["prefix"]),
                                parent_entry.get("backup_id"))
        chain_depth = body.get("chain_depth")
        if not isinstance(chain_depth, int) or chain_depth < 0:
            raise InvalidBackup(f"{where}: bad chain_depth")
        if (parent is None) != (chain_depth == 0):
            raise InvalidBackup(f"{where}: chain_depth and parent disagree")
        stats_entry = body.get("stats")
        stats = None
        if isinstance(stats_entry, dict):
            stats = BackupStats(stats_entry.get("data_bytes"), stats_entry.get("changed_bytes"),
                                stats_entry.get("pack_bytes"))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InvalidContainer):
            raise InvalidBackup(f"{where}: {e}") from None
        raise InvalidBackup(f"{where}: malformed manifest ({e!r})") from None
    return ManifestHeader(size_bytes, block_size, segment_size, parent, chain_depth, stats)


def check_manifest(body: dict[str, Any], ref: BackupRef) -> Manifest:
    """The typed version-1 manifest of backup ``ref``, once its structure is checked.

    Checks what restore relies on: the shared fields (:func:`check_header`), that
    every frame lies inside its pack and inside one segment of the volume, and
    that every zeroed run lies inside the volume. Frame digests are decoded (and
    their length checked) when a frame is used.

    :raise InvalidBackup: naming the first thing that is wrong.
    """
    where = f"manifest of {ref.container}/{ref.prefix}"
    header = check_header(body, ref, 1)
    block_count = header.block_count
    blocks_per_segment = header.segment_size // header.block_size
    try:
        objects = []
        for entry in body["objects"]:
            validate_object_name(entry["name"])
            if "/" in entry["name"] or not isinstance(entry["size"], int) \
                    or len(entry["sha256"]) != 64:
                raise InvalidBackup(f"{where}: bad object entry {entry!r}")
            objects.append(PackObject(entry["name"], entry["size"], entry["sha256"]))
        frames = []
        for entry in body["frames"]:
            frame = Frame(*entry)
            if not (0 <= frame.pack_index < len(objects)) or frame.pack_offset < 0 \
                    or frame.compressed_length < 0 \
                    or frame.pack_offset + frame.compressed_length \
                    > objects[frame.pack_index].size:
                raise InvalidBackup(f"{where}: frame {entry[:5]} points outside its object")
            if frame.block_count <= 0 or frame.first_block < 0 \
                    or frame.end_block > block_count \
                    or frame.first_block // blocks_per_segment \
                    != (frame.end_block - 1) // blocks_per_segment:
                raise InvalidBackup(f"{where}: frame {entry[:5]} has a bad block range")
            frames.append(frame)
        zeroed = []
        for first_block, run_blocks in body["zeroed"]:
            if run_blocks <= 0 or first_block < 0 or first_block + run_blocks > block_count:
                raise InvalidBackup(f"{where}: bad zeroed range {[first_block, run_blocks]}")
            zeroed.append(ZeroedRun(first_block, run_blocks))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InvalidContainer):
            raise InvalidBackup(f"{where}: {e}") from None
        raise InvalidBackup(f"{where}: malformed manifest ({e!r})") from None
    return Manifest(**header.fields(body, ref), objects=objects, frames=frames,
                    zeroed=zeroed)
