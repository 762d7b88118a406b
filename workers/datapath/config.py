"""The tuning of the data path: block geometry, compression, threads and memory bound.

Only what a backup *writes* depends on it (block and segment size, pack size,
compression); reading a backup follows its manifest, whatever the reader's
configuration.
"""
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from functools import lru_cache

from .codec import Codec
from .errors import IntegrityError

# The block digests a manifest may name: plain SHA-256, or HMAC-SHA256 under a
# per-project identity key (encrypted backups: equal content in two projects gives
# different digests, so nothing can be compared or shared across projects).
PLAIN_DIGEST = "sha256"
KEYED_DIGEST = "hmac-sha256"

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class DriverConfig:
    """Settings shared by backup, restore and verify (ChunkedDriver documents each one)."""

    block_size: int = 16 * KiB
    segment_size: int = 4 * MiB
    pack_size: int = 8 * MiB
    compression: str = "zstd"
    compression_level: int | None = None
    threads: int = 2
    io_threads: int = 4
    max_inflight_bytes: int = 64 * MiB
    max_chain_depth: int = 64
    check_interval_bytes: int = 32 * MiB
    fsync_target: bool = True
    # Each index object covers at most this much of the volume (rounded up to segments).
    index_span: int = 1024 * MiB
    # Written into every manifest as its "driver" (the service's name for this driver).
    driver_id: str | None = None
    # The identity key of keyed block digests (None: plain SHA-256) and its id, which
    # the manifest records so that a reader can tell which key it needs.
    digest_key: bytes | None = field(default=None, repr=False)
    digest_key_id: str | None = None
    codec: Codec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """:raise ValueError: if a setting is out of range or the compression unknown."""
        if self.block_size < 512 or self.block_size % 512:
            raise ValueError("block_size must be a positive multiple of 512")
        if self.segment_size < self.block_size or self.segment_size % self.block_size:
            raise ValueError("segment_size must be a multiple of block_size")
        if self.threads < 1 or self.io_threads < 1:
            raise ValueError("threads and io_threads must be >= 1")
        if self.max_chain_depth < 0:
            raise ValueError("max_chain_depth must be >= 0")
        # The bound must hold at least two segment tasks, or the pipeline cannot overlap.
        object.__setattr__(self, "max_inflight_bytes",
                           max(self.max_inflight_bytes, 2 * self.segment_size))
        if self.index_span < 1:
            raise ValueError("index_span must be >= 1")
        object.__setattr__(self, "index_span",
                           -(-self.index_span // self.segment_size) * self.segment_size)
        object.__setattr__(self, "codec", Codec(self.compression, self.compression_level))

    @property
    def blocks_per_segment(self) -> int:
        """Blocks in one segment."""
        return self.segment_size // self.block_size

    @property
    def blocks_per_index(self) -> int:
        """Blocks one index object covers (a multiple of blocks_per_segment)."""
        return self.index_span // self.block_size

    @property
    def digest_name(self) -> str:
        """The manifest's "digest" of what this configuration writes."""
        return PLAIN_DIGEST if self.digest_key is None else KEYED_DIGEST

    @property
    def block_digest(self) -> Callable[[bytes | memoryview], bytes]:
        """The 32-byte digest of one block (keyed when a digest key is set)."""
        if self.digest_key is None:
            return _sha256_digest
        return _hmac_sha256(self.digest_key)

    def reading(self, body: dict) -> "DriverConfig":
        """This configuration as it must read a backup whose manifest is ``body``: its
        block digests are checked with the function the manifest names.

        :raise IntegrityError: if the backup is keyed with an identity key this
            configuration does not hold.
        """
        name = body.get("digest")
        if name == KEYED_DIGEST:
            if self.digest_key is None or body.get("digest_key_id") != self.digest_key_id:
                raise IntegrityError(
                    f"backup {body.get('backup_id')}: its block digests are keyed with "
                    f"identity key {body.get('digest_key_id')!r}, which this reader does "
                    "not hold (another project's backup, or its keys are missing)")
            return self
        return self if self.digest_key is None else replace(self, digest_key=None,
                                                            digest_key_id=None)


def _sha256_digest(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


_HMAC_BLOCK = 64      # SHA-256's block size


@lru_cache(maxsize=64)
def _hmac_sha256(key: bytes) -> Callable[[bytes | memoryview], bytes]:
    """HMAC-SHA256 under ``key`` (RFC 2104), its padded-key states computed once.

    The same digests as ``hmac.digest(key, data, "sha256")``, at the speed of plain
    SHA-256: the one-shot call sets up an OpenSSL MAC for every block, which made
    keyed digests cost half as much again as the hash itself.
    """
    if len(key) > _HMAC_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_HMAC_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(data: bytes | memoryview) -> bytes:
        h = inner.copy()
        h.update(data)
        o = outer.copy()
        o.update(h.digest())
        return o.digest()
    return digest
