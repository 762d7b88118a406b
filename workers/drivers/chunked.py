"""Chunked, incremental, sparse-aware backup driver.

Format (version 1), all objects of one backup live under
``<container>/<prefix>/``:

* ``data-NNNNNNNN`` -- "pack" objects: a concatenation of compressed *frames*.
  A frame is the compression of a run of consecutive non-zero blocks that all
  lie inside one *segment* (``segment_size`` bytes of the volume, aligned).
* ``manifest.json`` -- written last; a JSON document followed by a line
  ``#sha256:<hex of the JSON bytes>``.  It records the format and version, the
  block size (the digest granularity), the compression, the volume size and
  metadata, the parent backup (container, prefix, backup id) and chain depth,
  every pack (name, size, SHA-256 of the whole object) and every frame
  ``[pack index, offset in pack, compressed length, first block, block count,
  base64 of the blocks' SHA-256 digests]``, and, for incrementals, the block
  runs ``[first block, count]`` that were data in the parent and are zero now.

A block absent from every manifest of the chain is zero.  A full backup lists
every non-zero block; an incremental lists only the blocks whose digest differs
from the parent's state (and the blocks that became zero), so restore applies
the chain newest-wins.

Pipeline: the calling thread walks the data extents of the source
(``SEEK_DATA``/``SEEK_HOLE``: holes are never read), cuts them into
segment-aligned tasks and hands them to ``threads`` compute workers which
``pread`` the range, SHA-256 every block (an all-zero block is recognised by
its digest), compare with the parent's digest and compress the runs of changed
blocks.  The calling thread packs the frames into objects that a small I/O pool
writes.  Bytes in flight (raw task buffers plus packs not yet written) are
bounded by ``max_inflight_bytes``, so memory does not grow with the volume.
``progress``/``cancelled`` are only ever called from the calling thread.

Chain depth: a full backup has ``chain_depth`` 0 and an incremental its
parent's depth + 1.  ``max_chain_depth`` caps the number of incrementals above
a full backup: when the new backup would exceed it, backup() takes a full
backup instead and says why in ``BackupResult.message`` (it never raises for
this).  Reading (restore/verify/incremental parents) refuses chains deeper than
``MAX_READ_CHAIN`` or with loops with InvalidBackup.

Scale: holes cost nothing, but the manifest and the in-memory digest map grow
with the *non-zero* data (about 2-3 MB per GiB at the default 16 KiB blocks).
"""
import base64
import binascii
import ctypes
import ctypes.util
import datetime
import errno
import hashlib
import json
import os
import threading
import time
import zlib
from collections import deque
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait
from dataclasses import dataclass
from dataclasses import field
from typing import NamedTuple

from .errors import BackupCancelled
from .errors import DataPathError
from .errors import IntegrityError
from .errors import InvalidBackup
from .errors import InvalidContainer
from .errors import NotFound
from .errors import StoreError
from .names import validate_container
from .names import validate_identifier
from .names import validate_object_name

try:  # optional at import time so that "none"/"zlib" work without it
    import zstandard
except ImportError:  # pragma: no cover
    zstandard = None

KiB = 1024
MiB = 1024 * KiB

FORMAT = "orchestrator.chunked-backup"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
MAX_READ_CHAIN = 1000
DIGEST_LEN = 32
_CHECKSUM_TAG = b"\n#sha256:"


class VolumeIOError(DataPathError):
    """Reading the source volume or writing the restore target failed."""


class BackupRef(NamedTuple):
    container: str
    prefix: str


@dataclass
class BackupResult:
    container: str
    prefix: str
    object_count: int
    stored_bytes: int
    logical_bytes: int          # size of the volume the backup represents
    incremental: bool
    message: str | None
    manifest: dict
    data_bytes: int = 0         # non-zero bytes read and digested
    changed_bytes: int = 0      # bytes of blocks stored by this backup (before compression)
    elapsed_s: float = 0.0

    @property
    def ref(self):
        return BackupRef(self.container, self.prefix)


@dataclass
class RestoreResult:
    ok: bool
    bytes_written: int          # data bytes written (non-zero blocks)
    zeroed_bytes: int           # bytes made zero (0 when target_is_zeroed)
    objects_read: int
    stored_bytes_read: int
    blocks_verified: int
    chain: list = field(default_factory=list)   # BackupRefs, newest first
    elapsed_s: float = 0.0


@dataclass
class VerifyResult:
    ok: bool
    objects_checked: int
    stored_bytes_checked: int
    logical_bytes_checked: int
    blocks_checked: int
    chain: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    elapsed_s: float = 0.0


# --------------------------------------------------------------------------- helpers

_libc = None


def _get_libc():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        lib.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        lib.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        _libc = lib
    return _libc


def _fallocate(fd, mode, off, length):
    if _get_libc().fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _start_writeback(fd, off, length):
    """sync_file_range(SYNC_FILE_RANGE_WRITE): start writing dirty pages of the
    range now, so the final fsync has little left; no-op where unsupported."""
    global _sfr_ok
    if not _sfr_ok:
        return
    try:
        if _get_libc().sync_file_range(fd, off, length, 2) != 0:
            _sfr_ok = False
    except (AttributeError, OSError):
        _sfr_ok = False


_sfr_ok = True
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10
_ZERO_CHUNK = bytes(4 * MiB)


def _zero_range(fd, off, length):
    """Make [off, off+length) read as zeros: punch a hole, else write zeros."""
    if length <= 0:
        return
    for mode in (_FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, _FALLOC_FL_ZERO_RANGE):
        try:
            _fallocate(fd, mode, off, length)
            return
        except (OSError, AttributeError):
            continue
    end = off + length
    while off < end:
        n = min(len(_ZERO_CHUNK), end - off)
        _pwrite_all(fd, memoryview(_ZERO_CHUNK)[:n], off)
        off += n


def _pwrite_all(fd, data, off):
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, off)
        mv = mv[n:]
        off += n


def _pread_full(fd, length, off):
    buf = os.pread(fd, length, off)
    if len(buf) == length:
        return buf
    parts = [buf]
    got = len(buf)
    while got < length:
        more = os.pread(fd, length - got, off + got)
        if not more:   # past EOF: the volume reads as zeros there
            parts.append(bytes(length - got))
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _data_extents(fd, size):
    """Yield (start, end) byte ranges of [0, size) that may hold data."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:        # only a hole after pos
                return
            yield pos, size                   # no SEEK_DATA support: all data
            return
        if start >= size:
            return
        try:
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError:
            end = size
        end = min(end, size)
        if end <= start:
            end = size
        yield start, end
        pos = end


class _Codec:
    """Per-thread compressors (zstandard objects are not thread-safe)."""

    def __init__(self, name, level):
        if name not in ("zstd", "zlib", "none"):
            raise ValueError(f"unknown compression {name!r} (zstd, zlib or none)")
        if name == "zstd" and zstandard is None:
            raise DataPathError("compression 'zstd' needs the zstandard package")
        self.name = name
        self.level = level if level is not None else {"zstd": 1, "zlib": 6, "none": 0}[name]
        self._tls = threading.local()

    def compress(self, data):
        if self.name == "zstd":
            c = getattr(self._tls, "c", None)
            if c is None:
                c = self._tls.c = zstandard.ZstdCompressor(level=self.level)
            return c.compress(data)
        if self.name == "zlib":
            return zlib.compress(data, self.level)
        return bytes(data)

    def decompress(self, data, expected_len):
        try:
            if self.name == "zstd":
                d = getattr(self._tls, "d", None)
                if d is None:
                    d = self._tls.d = zstandard.ZstdDecompressor()
                out = d.decompress(data, max_output_size=expected_len)
            elif self.name == "zlib":
                out = zlib.decompress(data)
            else:
                out = data
        except Exception as e:
            raise IntegrityError(f"cannot decompress frame ({self.name}): {e}") from None
        if len(out) != expected_len:
            raise IntegrityError(f"frame decompressed to {len(out)} bytes, expected {expected_len}")
        return out


class _Ticker:
    """Rate-limits progress/cancelled calls (always from the calling thread)."""

    def __init__(self, total, progress, cancelled, byte_interval, time_interval=0.5):
        self.total = total
        self.progress = progress
        self.cancelled = cancelled
        self.byte_interval = byte_interval
        self.time_interval = time_interval
        self.done = 0
        self._p_bytes = -1
        self._p_time = 0.0
        self._c_bytes = 0
        self._c_time = time.monotonic()

    def report(self, done=None, force=False):
        if done is not None:
            self.done = done
        if self.progress is None:
            return
        now = time.monotonic()
        if (force or self.done - self._p_bytes >= self.byte_interval
                or now - self._p_time >= self.time_interval):
            self._p_bytes = self.done
            self._p_time = now
            self.progress(self.done, self.total)

    def should_cancel(self, pos=None, force=False):
        if self.cancelled is None:
            return False
        pos = self.done if pos is None else pos
        now = time.monotonic()
        if (force or pos - self._c_bytes >= self.byte_interval
                or now - self._c_time >= self.time_interval):
            self._c_bytes = pos
            self._c_time = now
            return bool(self.cancelled())
        return False


def _b64(b):
    return base64.b64encode(b).decode("ascii")


def _unb64(s):
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidBackup("manifest holds malformed base64 digests") from None


def _now_iso():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def encode_manifest(body):
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return data + _CHECKSUM_TAG + hashlib.sha256(data).hexdigest().encode() + b"\n"


def decode_manifest(raw, name="manifest"):
    """Parse and check a manifest object; IntegrityError if damaged."""
    i = raw.rfind(_CHECKSUM_TAG)
    if i < 0 or not raw.endswith(b"\n"):
        raise IntegrityError(f"{name}: truncated or damaged (no checksum line)")
    data = raw[:i]
    want = raw[i + len(_CHECKSUM_TAG):-1].decode("ascii", "replace")
    if hashlib.sha256(data).hexdigest() != want:
        raise IntegrityError(f"{name}: checksum mismatch")
    try:
        body = json.loads(data)
    except ValueError as e:
        raise IntegrityError(f"{name}: not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise InvalidBackup(f"{name}: manifest is not a JSON object")
    return body


def _check_manifest(m, ref):
    """Validate the structure of a decoded manifest (InvalidBackup if wrong)."""
    where = f"manifest of {ref.container}/{ref.prefix}"
    if m.get("format") != FORMAT:
        raise InvalidBackup(f"{where}: unknown format {m.get('format')!r}")
    if m.get("version") not in SUPPORTED_VERSIONS:
        raise InvalidBackup(f"{where}: unsupported manifest version {m.get('version')!r} "
                            f"(this driver reads {list(SUPPORTED_VERSIONS)})")
    try:
        bs = m["block_size"]
        seg = m["segment_size"]
        size = m["size_bytes"]
        if not (isinstance(bs, int) and bs >= 512 and bs % 512 == 0):
            raise InvalidBackup(f"{where}: bad block_size {bs!r}")
        if not (isinstance(seg, int) and seg >= bs and seg % bs == 0):
            raise InvalidBackup(f"{where}: bad segment_size {seg!r}")
        if not (isinstance(size, int) and size >= 0):
            raise InvalidBackup(f"{where}: bad size_bytes {size!r}")
        if m.get("digest") != "sha256":
            raise InvalidBackup(f"{where}: unknown digest {m.get('digest')!r}")
        if m.get("compression") not in ("zstd", "zlib", "none"):
            raise InvalidBackup(f"{where}: unknown compression {m.get('compression')!r}")
        if (m.get("container"), m.get("prefix")) != (ref.container, ref.prefix):
            raise InvalidBackup(f"{where}: manifest belongs to "
                                f"{m.get('container')}/{m.get('prefix')}")
        nblocks = -(-size // bs)
        bps = seg // bs
        objs = m["objects"]
        for o in objs:
            validate_object_name(o["name"])
            if "/" in o["name"] or not isinstance(o["size"], int) or len(o["sha256"]) != 64:
                raise InvalidBackup(f"{where}: bad object entry {o!r}")
        for fr in m["frames"]:
            oi, ooff, clen, fb, n, _d = fr
            if not (0 <= oi < len(objs)) or ooff < 0 or clen < 0 or ooff + clen > objs[oi]["size"]:
                raise InvalidBackup(f"{where}: frame {fr[:5]} points outside its object")
            if n <= 0 or fb < 0 or fb + n > nblocks or fb // bps != (fb + n - 1) // bps:
                raise InvalidBackup(f"{where}: frame {fr[:5]} has a bad block range")
        for zb, n in m["zeroed"]:
            if n <= 0 or zb < 0 or zb + n > nblocks:
                raise InvalidBackup(f"{where}: bad zeroed range {[zb, n]}")
        parent = m.get("parent")
        if parent is not None:
            validate_container(parent["container"])
            validate_object_name(parent["prefix"])
        if not isinstance(m.get("chain_depth"), int) or m["chain_depth"] < 0:
            raise InvalidBackup(f"{where}: bad chain_depth")
        if (parent is None) != (m["chain_depth"] == 0):
            raise InvalidBackup(f"{where}: chain_depth and parent disagree")
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InvalidContainer):
            raise InvalidBackup(f"{where}: {e}") from None
        raise InvalidBackup(f"{where}: malformed manifest ({e!r})") from None
    return m


# --------------------------------------------------------------------------- driver

class ChunkedDriver:
    DRIVER_ID = "orchestrator.drivers.chunked"

    def __init__(self, store, *, block_size=16 * KiB, compression="zstd", threads=2,
                 max_inflight_bytes=64 * MiB, max_chain_depth=64,
                 compression_level=None, segment_size=4 * MiB, pack_size=8 * MiB,
                 io_threads=4, check_interval_bytes=32 * MiB, fsync_target=True):
        if block_size < 512 or block_size % 512:
            raise ValueError("block_size must be a positive multiple of 512")
        if segment_size < block_size or segment_size % block_size:
            raise ValueError("segment_size must be a multiple of block_size")
        if threads < 1 or io_threads < 1:
            raise ValueError("threads and io_threads must be >= 1")
        if max_chain_depth < 0:
            raise ValueError("max_chain_depth must be >= 0")
        self.store = store
        self.block_size = int(block_size)
        self.segment_size = int(segment_size)
        self.pack_size = int(pack_size)
        self.codec = _Codec(compression, compression_level)
        self.threads = int(threads)
        self.io_threads = int(io_threads)
        self.max_inflight_bytes = max(int(max_inflight_bytes), 2 * self.segment_size)
        self.max_chain_depth = int(max_chain_depth)
        self.check_interval_bytes = int(check_interval_bytes)
        self.fsync_target = fsync_target
        self._codecs = {compression: self.codec}

    # ------------------------------------------------------------------ naming
    @classmethod
    def ref_for(cls, backup_id, container=None):
        """Where backup ``backup_id`` lives (known before any byte is written)."""
        validate_identifier(backup_id, "backup_id")
        container = cls.default_container(backup_id) if container is None else container
        return BackupRef(validate_container(container), f"backup_{backup_id}")

    @staticmethod
    def default_container(backup_id):
        validate_identifier(backup_id, "backup_id")
        if len(backup_id) >= 4:
            return f"{backup_id[0:2]}/{backup_id[2:4]}/{backup_id}"
        return backup_id

    @staticmethod
    def _obj(ref, name):
        return f"{ref.container}/{ref.prefix}/{name}"

    def _codec_for(self, name):
        c = self._codecs.get(name)
        if c is None:
            c = self._codecs[name] = _Codec(name, None)
        return c

    # ------------------------------------------------------------------ manifests
    def read_manifest(self, ref):
        ref = BackupRef(validate_container(ref[0]), validate_object_name(ref[1]))
        name = self._obj(ref, MANIFEST_NAME)
        try:
            raw = self.store.get(name)
        except NotFound:
            raise IntegrityError(f"manifest {name!r} is missing") from None
        return _check_manifest(decode_manifest(raw, name), ref)

    def _load_chain(self, ref):
        """Manifests from ``ref`` down to its full backup (newest first)."""
        chain = []
        seen = set()
        cur = BackupRef(*ref)
        expect_id = None
        while True:
            if cur in seen:
                raise InvalidBackup(f"backup chain loops at {cur.container}/{cur.prefix}")
            seen.add(cur)
            m = self.read_manifest(cur)
            if expect_id is not None and m.get("backup_id") != expect_id:
                raise InvalidBackup(f"{cur.container}/{cur.prefix} holds backup "
                                    f"{m.get('backup_id')!r}, its child expects {expect_id!r}")
            if chain:
                child = chain[-1][1]
                if m["chain_depth"] != child["chain_depth"] - 1:
                    raise InvalidBackup("chain depth mismatch between "
                                        f"{chain[-1][0]} and {cur}")
                for k in ("block_size", "segment_size", "size_bytes"):
                    if m[k] != child[k]:
                        raise InvalidBackup(f"{k} differs between {chain[-1][0]} and {cur}")
            chain.append((cur, m))
            if len(chain) > MAX_READ_CHAIN:
                raise InvalidBackup(f"backup chain deeper than {MAX_READ_CHAIN}")
            p = m.get("parent")
            if p is None:
                return chain
            cur = BackupRef(p["container"], p["prefix"])
            expect_id = p.get("backup_id")

    def list_backups(self, prefix=""):
        """Find backups in the store (for rebuilding a catalogue): [(ref, manifest)]."""
        out = []
        for name in self.store.list(prefix):
            if not name.endswith("/" + MANIFEST_NAME):
                continue
            parts = name.split("/")
            if len(parts) < 3:
                continue
            ref = BackupRef("/".join(parts[:-2]), parts[-2])
            try:
                out.append((ref, self.read_manifest(ref)))
            except DataPathError:
                continue
        return out

    # ------------------------------------------------------------------ backup
    def backup(self, source_path, *, backup_id, volume_id, size_bytes, container=None,
               parent=None, volume_meta=None, progress=None, cancelled=None):
        t0 = time.monotonic()
        validate_identifier(backup_id, "backup_id")
        if not isinstance(volume_id, str) or not volume_id:
            raise ValueError("volume_id must be a non-empty string")
        if not isinstance(size_bytes, int) or size_bytes < 0:
            raise ValueError("size_bytes must be a non-negative int")
        ref = self.ref_for(backup_id, container)
        bs, seg = self.block_size, self.segment_size
        bps = seg // bs

        message = None
        parent_map = None
        parent_entry = None
        depth = 0
        if parent is not None:
            parent = BackupRef(*parent)
            try:
                chain = self._load_chain(parent)
            except DataPathError as e:
                chain = None
                message = f"parent backup unusable ({e}); took a full backup"
            if chain is not None:
                pm = chain[0][1]
                if pm["size_bytes"] != size_bytes:
                    message = (f"volume size changed from {pm['size_bytes']} to {size_bytes} "
                               "bytes since the parent backup; took a full backup")
                elif pm["block_size"] != bs or pm["segment_size"] != seg:
                    message = (f"block size changed from {pm['block_size']} to {bs} "
                               "since the parent backup; took a full backup")
                elif pm.get("volume_id") != volume_id:
                    message = (f"parent backup belongs to volume {pm.get('volume_id')!r}, "
                               f"not {volume_id!r}; took a full backup")
                elif pm["chain_depth"] + 1 > self.max_chain_depth:
                    message = (f"incremental chain would exceed max_chain_depth="
                               f"{self.max_chain_depth}; took a full backup")
                elif parent == ref:
                    message = "parent is this very backup; took a full backup"
                else:
                    parent_map = self._digest_map(chain, bps)
                    depth = pm["chain_depth"] + 1
                    parent_entry = {"container": parent.container, "prefix": parent.prefix,
                                    "backup_id": pm.get("backup_id")}

        # A completed backup with this id is never overwritten; leftovers of an
        # interrupted attempt (no manifest) are removed.
        if self.store.exists(self._obj(ref, MANIFEST_NAME)):
            raise InvalidBackup(f"backup {ref.container}/{ref.prefix} already exists")
        self._delete_prefix(ref)
        try:
            fd = os.open(source_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise VolumeIOError(f"cannot open source {source_path!r}: {e}") from e
        try:
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except OSError:
                pass
            res = self._run_backup(fd, ref, size_bytes, parent_map, progress, cancelled)
        except BaseException:
            self._cleanup(ref, None)
            raise
        finally:
            os.close(fd)

        frames, objects, zeroed, data_bytes, changed_bytes = res
        try:
            manifest = {
                "format": FORMAT, "version": FORMAT_VERSION, "driver": self.DRIVER_ID,
                "backup_id": backup_id, "volume_id": volume_id, "created_at": _now_iso(),
                "container": ref.container, "prefix": ref.prefix,
                "size_bytes": size_bytes, "block_size": bs, "segment_size": seg,
                "digest": "sha256", "compression": self.codec.name,
                "compression_level": self.codec.level,
                "incremental": parent_map is not None, "parent": parent_entry,
                "chain_depth": depth, "volume_meta": dict(volume_meta or {}),
                "objects": objects, "frames": frames, "zeroed": zeroed,
                "stats": {"data_bytes": data_bytes, "changed_bytes": changed_bytes,
                          "pack_bytes": sum(o["size"] for o in objects)},
            }
            raw = encode_manifest(manifest)
            if cancelled is not None and cancelled():
                raise BackupCancelled(f"backup {backup_id} cancelled")
            self.store.put(self._obj(ref, MANIFEST_NAME), raw)
        except BaseException:
            self._cleanup(ref, None)
            raise
        if progress is not None:
            progress(size_bytes, size_bytes)
        return BackupResult(
            container=ref.container, prefix=ref.prefix, object_count=len(objects) + 1,
            stored_bytes=manifest["stats"]["pack_bytes"] + len(raw), logical_bytes=size_bytes,
            incremental=parent_map is not None, message=message, manifest=manifest,
            data_bytes=data_bytes, changed_bytes=changed_bytes,
            elapsed_s=time.monotonic() - t0)

    def _digest_map(self, chain, bps):
        """Effective per-block digests of the newest backup of ``chain``.

        {segment index: (bytearray digests[bps*32], bytearray nonzero flags[bps])}
        """
        smap = {}
        for _ref, m in reversed(chain):          # oldest first, newer overwrite
            for _oi, _off, _cl, fb, n, dig in m["frames"]:
                d = _unb64(dig)
                if len(d) != n * DIGEST_LEN:
                    raise InvalidBackup("frame digest list has the wrong length")
                s, j = divmod(fb, bps)
                ent = smap.get(s)
                if ent is None:
                    ent = smap[s] = (bytearray(bps * DIGEST_LEN), bytearray(bps))
                ent[0][j * DIGEST_LEN:(j + n) * DIGEST_LEN] = d
                ent[1][j:j + n] = b"\x01" * n
            for zb, n in m["zeroed"]:
                b = zb
                while b < zb + n:
                    s, j = divmod(b, bps)
                    k = min(n - (b - zb), bps - j)
                    ent = smap.get(s)
                    if ent is not None:
                        ent[1][j:j + k] = bytes(k)
                    b += k
        return smap

    def _tasks(self, fd, size):
        bs, seg = self.block_size, self.segment_size
        pos = 0
        for start, end in _data_extents(fd, size):
            start = max(start - start % bs, pos)
            end = min(-(-end // bs) * bs, size)
            while start < end:
                stop = min(end, (start // seg + 1) * seg)
                yield start, stop - start
                start = stop
            pos = max(pos, end)

    def _scan(self, fd, off, length, parent_seg, zero_digests):
        """Worker: read, digest, classify and compress one task (inside one segment)."""
        bs = self.block_size
        try:
            buf = _pread_full(fd, length, off)
        except OSError as e:
            raise VolumeIOError(f"cannot read source at offset {off}: {e}") from e
        mv = memoryview(buf)
        fb0 = off // bs
        j0 = fb0 % (self.segment_size // bs)
        n = -(-length // bs)
        sha = hashlib.sha256
        flags = bytearray(n)      # 0 zero, 1 unchanged, 2 changed
        digs = [None] * n
        zfull = zero_digests[0]
        for i in range(n):
            a = i * bs
            d = sha(mv[a:a + bs]).digest()
            if d == zfull or (a + bs > length and d == zero_digests.get(length - a)):
                continue
            digs[i] = d
            if parent_seg is not None and parent_seg[1][j0 + i] and \
                    parent_seg[0][(j0 + i) * DIGEST_LEN:(j0 + i + 1) * DIGEST_LEN] == d:
                flags[i] = 1
            else:
                flags[i] = 2
        frames = []
        changed = 0
        i = 0
        while i < n:
            if flags[i] != 2:
                i += 1
                continue
            k = i
            while k < n and flags[k] == 2:
                k += 1
            raw = mv[i * bs:min(k * bs, length)]
            changed += len(raw)
            frames.append((fb0 + i, k - i, self.codec.compress(raw), b"".join(digs[i:k])))
            i = k
        return frames, bytes(flags), changed

    def _run_backup(self, fd, ref, size, parent_map, progress, cancelled):
        bs, seg = self.block_size, self.segment_size
        bps = seg // bs
        zero_digests = {0: hashlib.sha256(bytes(bs)).digest()}
        if size % bs:
            zero_digests[size % bs] = hashlib.sha256(bytes(size % bs)).digest()
        ticker = _Ticker(size, progress, cancelled, self.check_interval_bytes)
        ticker.report(0, force=True)
        if ticker.should_cancel(0, force=True):
            raise BackupCancelled("backup cancelled before it started")

        frames_out = []
        objects = []
        current = []          # compressed frames of the pack being built
        current_len = 0
        pending = deque()     # (kind, future, bytes accounted, extra)
        inflight = 0
        data_bytes = 0
        changed_bytes = 0
        seen = {} if parent_map is not None else None   # seg -> bytearray(bps) nonzero now

        def flush_pack():
            nonlocal current, current_len, inflight
            if not current:
                return
            idx = len(objects)
            name = f"data-{idx:08d}"
            objects.append(None)
            data = b"".join(current)
            current, current_len = [], 0
            fut = io_pool.submit(self._put_object, ref, name, data)
            pending.append(("put", fut, len(data), idx))

        def consume_one():
            nonlocal inflight, current_len, data_bytes, changed_bytes
            kind, fut, nbytes, extra = pending.popleft()
            while True:
                done, _ = wait([fut], timeout=ticker.time_interval)
                if done:
                    break
                ticker.report()
            result = fut.result()
            inflight -= nbytes
            if kind == "put":
                objects[extra] = result
                return
            off, length = extra
            frames, flags, changed = result
            data_bytes += length
            changed_bytes += changed
            if seen is not None:
                s, j = divmod(off // bs, bps)
                arr = seen.get(s)
                if arr is None:
                    arr = seen[s] = bytearray(bps)
                arr[j:j + len(flags)] = flags
            for fb, n, comp, dig in frames:
                if current_len and current_len + len(comp) > self.pack_size:
                    flush_pack()
                frames_out.append([len(objects), current_len, len(comp), fb, n, _b64(dig)])
                current.append(comp)
                current_len += len(comp)
                inflight += len(comp)
            if current_len >= self.pack_size:
                flush_pack()
            ticker.report(off + length)

        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bk-scan")
        io_pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="bk-io")
        try:
            for off, length in self._tasks(fd, size):
                if ticker.should_cancel(off):
                    raise BackupCancelled("backup cancelled")
                while pending and inflight + length > self.max_inflight_bytes:
                    consume_one()
                if ticker.done < off:
                    ticker.report(off)
                try:
                    os.posix_fadvise(fd, off, length, os.POSIX_FADV_WILLNEED)
                except OSError:
                    pass
                parent_seg = parent_map.get(off // seg) if parent_map is not None else None
                fut = pool.submit(self._scan, fd, off, length, parent_seg, zero_digests)
                pending.append(("scan", fut, length, (off, length)))
                inflight += length
            while pending:
                consume_one()
            flush_pack()
            while pending:
                consume_one()
            if ticker.should_cancel(size, force=True):
                raise BackupCancelled("backup cancelled")
        except BaseException:
            for _k, f, _n, _e in pending:
                f.cancel()
            for _k, f, _n, _e in pending:
                try:
                    f.result()
                except BaseException:
                    pass
            raise
        finally:
            pool.shutdown(wait=True)
            io_pool.shutdown(wait=True)
        ticker.report(size)

        zeroed = []
        if parent_map is not None:
            for s in sorted(parent_map):
                pflags = parent_map[s][1]
                cur = seen.get(s)
                run_start = None
                for j in range(bps + 1):
                    z = j < bps and pflags[j] and not (cur is not None and cur[j])
                    if z and run_start is None:
                        run_start = j
                    elif not z and run_start is not None:
                        zeroed.append([s * bps + run_start, j - run_start])
                        run_start = None
        return frames_out, objects, zeroed, data_bytes, changed_bytes

    def _put_object(self, ref, name, data):
        digest = hashlib.sha256(data).hexdigest()
        self.store.put(self._obj(ref, name), data)
        return {"name": name, "size": len(data), "sha256": digest}

    def _delete_prefix(self, ref):
        prefix = f"{ref.container}/{ref.prefix}/"
        names = self.store.list(prefix)
        man = self._obj(ref, MANIFEST_NAME)
        if man in names:                 # the manifest goes first: no half-valid backup
            self.store.delete(man)
        for n in names:
            if n != man:
                self.store.delete(n)
        self.store.purge_incomplete(prefix)

    def _cleanup(self, ref, _names):
        try:
            self._delete_prefix(ref)
        except Exception:
            pass

    def delete(self, ref):
        ref = BackupRef(validate_container(ref[0]), validate_object_name(ref[1]))
        self._delete_prefix(ref)

    # ------------------------------------------------------------------ restore plan
    def _plan(self, chain):
        """Newest-wins plan.

        Returns (work, data_runs) where work maps (chain index, object index) to a
        list of (frame, live runs [(first block, count)]) and data_runs is a sorted
        list of block runs that receive data.
        """
        m0 = chain[0][1]
        bs, seg = m0["block_size"], m0["segment_size"]
        bps = seg // bs
        claimed = {}     # seg -> bytearray(bps): 0 free, 1 zero, 2 data
        work = {}
        for ci, (_ref, m) in enumerate(chain):
            for zb, n in m["zeroed"]:
                b = zb
                while b < zb + n:
                    s, j = divmod(b, bps)
                    k = min(zb + n - b, bps - j)
                    arr = claimed.get(s)
                    if arr is None:
                        arr = claimed[s] = bytearray(bps)
                    for x in range(j, j + k):
                        if not arr[x]:
                            arr[x] = 1
                    b += k
            for fr in m["frames"]:
                oi, _off, _cl, fb, n, _dig = fr
                s, j = divmod(fb, bps)
                arr = claimed.get(s)
                if arr is None:
                    arr = claimed[s] = bytearray(bps)
                sl = arr[j:j + n]
                if sl.count(0) == n:                     # fast path: all live
                    runs = [(fb, n)]
                    arr[j:j + n] = b"\x02" * n
                else:
                    runs = []
                    start = None
                    for x in range(n):
                        live = not sl[x]
                        if live:
                            arr[j + x] = 2
                            if start is None:
                                start = x
                        elif start is not None:
                            runs.append((fb + start, x - start))
                            start = None
                    if start is not None:
                        runs.append((fb + start, n - start))
                if runs:
                    work.setdefault((ci, oi), []).append((fr, runs))
        data_runs = []
        for s in sorted(claimed):
            arr = claimed[s]
            start = None
            for x in range(bps + 1):
                d = x < bps and arr[x] == 2
                if d and start is None:
                    start = x
                elif not d and start is not None:
                    data_runs.append((s * bps + start, x - start))
                    start = None
        return work, data_runs

    @staticmethod
    def _zero_runs(data_runs, nblocks):
        pos = 0
        out = []
        for b, n in data_runs:
            if b > pos:
                out.append((pos, b - pos))
            pos = b + n
        if pos < nblocks:
            out.append((pos, nblocks - pos))
        return out

    # ------------------------------------------------------------------ restore
    def restore(self, ref, target_path, *, target_is_zeroed=False, progress=None,
                cancelled=None):
        t0 = time.monotonic()
        ref = BackupRef(*ref)
        chain = self._load_chain(ref)
        m0 = chain[0][1]
        size, bs = m0["size_bytes"], m0["block_size"]
        nblocks = -(-size // bs)
        work, data_runs = self._plan(chain)
        ticker = _Ticker(size, progress, cancelled, self.check_interval_bytes)
        ticker.report(0, force=True)
        if ticker.should_cancel(0, force=True):
            raise BackupCancelled("restore cancelled before it started")
        try:
            fd = os.open(target_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise VolumeIOError(f"cannot open restore target {target_path!r}: {e}") from e
        stats = {"written": 0, "zeroed": 0, "objects": 0, "stored": 0, "blocks": 0}
        try:
            try:
                st = os.fstat(fd)
                import stat as _stat
                if _stat.S_ISREG(st.st_mode) and st.st_size < size:
                    os.ftruncate(fd, size)
            except OSError as e:
                raise VolumeIOError(f"cannot size restore target: {e}") from e
            done = 0
            if not target_is_zeroed:
                for b, n in self._zero_runs(data_runs, nblocks):
                    off = b * bs
                    length = min((b + n) * bs, size) - off
                    try:
                        _zero_range(fd, off, length)
                    except OSError as e:
                        raise VolumeIOError(f"cannot zero target range at {off}: {e}") from e
                    stats["zeroed"] += length
                    done += length
                    ticker.report(done)
                    if ticker.should_cancel(done):
                        raise BackupCancelled("restore cancelled")
            else:
                done = size - sum(min((b + n) * bs, size) - b * bs for b, n in data_runs)
            ticker.report(done)
            self._run_restore(fd, chain, work, ticker, done, stats)
            if self.fsync_target:
                try:
                    os.fsync(fd)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.EROFS):
                        raise VolumeIOError(f"cannot fsync restore target: {e}") from e
        finally:
            os.close(fd)
        ticker.report(size, force=True)
        return RestoreResult(ok=True, bytes_written=stats["written"], zeroed_bytes=stats["zeroed"],
                             objects_read=stats["objects"], stored_bytes_read=stats["stored"],
                             blocks_verified=stats["blocks"], chain=[r for r, _ in chain],
                             elapsed_s=time.monotonic() - t0)

    def _fetch(self, ref, obj):
        """I/O worker: get an object and check its size and SHA-256."""
        name = self._obj(ref, obj["name"])
        try:
            data = self.store.get(name)
        except NotFound:
            raise IntegrityError(f"object {name!r} is missing") from None
        if len(data) != obj["size"]:
            raise IntegrityError(f"object {name!r} is {len(data)} bytes, expected {obj['size']} "
                                 "(truncated or damaged)")
        if hashlib.sha256(data).hexdigest() != obj["sha256"]:
            raise IntegrityError(f"object {name!r} does not match its SHA-256 digest")
        return data

    def _apply(self, fd, data, items, m, name, write):
        """Compute worker: decompress frames, check digests, pwrite live runs.

        ``items``: [(frame, runs)]; with write=False every block is checked and
        nothing is written (verify)."""
        bs, size = m["block_size"], m["size_bytes"]
        codec = self._codec_for(m["compression"])
        mv = memoryview(data)
        written = blocks = 0
        sha = hashlib.sha256
        for fr, runs in items:
            _oi, off, clen, fb, n, dig = fr
            digs = _unb64(dig)
            if len(digs) != n * DIGEST_LEN:
                raise InvalidBackup(f"{name}: frame digest list has the wrong length")
            raw_len = min((fb + n) * bs, size) - fb * bs
            raw = codec.decompress(mv[off:off + clen], raw_len)
            rmv = memoryview(raw)
            for rb, rn in runs:
                for b in range(rb, rb + rn):
                    i = b - fb
                    if sha(rmv[i * bs:(i + 1) * bs]).digest() != digs[i * DIGEST_LEN:(i + 1) * DIGEST_LEN]:
                        raise IntegrityError(f"{name}: block {b} does not match its digest")
                blocks += rn
                if write:
                    a = (rb - fb) * bs
                    chunk = rmv[a:min((rb - fb + rn) * bs, raw_len)]
                    try:
                        _pwrite_all(fd, chunk, rb * bs)
                        if self.fsync_target:
                            _start_writeback(fd, rb * bs, len(chunk))
                    except OSError as e:
                        raise VolumeIOError(f"cannot write restore target at {rb * bs}: {e}") from e
                    written += len(chunk)
                else:
                    written += min((rb + rn) * bs, size) - rb * bs
        return written, blocks

    def _run_restore(self, fd, chain, work, ticker, done, stats, write=True, problems=None):
        """Fetch objects (I/O pool), then verify/decompress/write (compute pool)."""
        keys = sorted(work)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rs-cpu")
        io_pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="rs-io")
        pending = set()
        meta = {}
        inflight = 0
        it = iter(keys)
        exhausted = False
        try:
            while True:
                while not exhausted and inflight < self.max_inflight_bytes:
                    key = next(it, None)
                    if key is None:
                        exhausted = True
                        break
                    ci, oi = key
                    ref, m = chain[ci]
                    obj = m["objects"][oi]
                    fut = io_pool.submit(self._fetch, ref, obj)
                    cost = obj["size"] + sum(min((fr[3] + fr[4]) * m["block_size"], m["size_bytes"])
                                             - fr[3] * m["block_size"] for fr, _r in work[key])
                    meta[fut] = ("fetch", key, cost)
                    pending.add(fut)
                    inflight += cost
                if not pending:
                    break
                finished, _ = wait(pending, timeout=ticker.time_interval, return_when=FIRST_COMPLETED)
                ticker.report(done)
                for fut in finished:
                    pending.discard(fut)
                    kind, key, cost = meta.pop(fut)
                    ci, oi = key
                    ref, m = chain[ci]
                    name = self._obj(ref, m["objects"][oi]["name"])
                    try:
                        result = fut.result()
                    except (IntegrityError, InvalidBackup, StoreError) as e:
                        if problems is None:
                            raise
                        problems.append(str(e))
                        inflight -= cost
                        continue
                    if kind == "fetch":
                        stats["objects"] += 1
                        stats["stored"] += len(result)
                        f2 = pool.submit(self._apply, fd, result, work[key], m, name, write)
                        meta[f2] = ("apply", key, cost)
                        pending.add(f2)
                    else:
                        inflight -= cost
                        w, blocks = result
                        stats["written"] += w
                        stats["blocks"] += blocks
                        done += w
                        ticker.report(done)
                if ticker.should_cancel(done):
                    raise BackupCancelled("restore cancelled" if write else "verify cancelled")
        except BaseException:
            for f in pending:
                f.cancel()
            wait(pending)
            raise
        finally:
            pool.shutdown(wait=True)
            io_pool.shutdown(wait=True)
        return done

    # ------------------------------------------------------------------ verify
    def verify(self, ref, *, progress=None, cancelled=None):
        """Re-read every object of the backup and of the backups it builds on, check
        every object digest and every block digest. Never raises for damage: returns
        VerifyResult(ok=False, problems=[...]). Raises BackupCancelled if cancelled."""
        t0 = time.monotonic()
        ref = BackupRef(*ref)
        problems = []
        try:
            chain = self._load_chain(ref)
        except (IntegrityError, InvalidBackup, StoreError) as e:
            return VerifyResult(ok=False, objects_checked=0, stored_bytes_checked=0,
                                logical_bytes_checked=0, blocks_checked=0, chain=[ref],
                                problems=[str(e)], elapsed_s=time.monotonic() - t0)
        work = {}
        total = 0
        for ci, (_r, m) in enumerate(chain):
            bs, size = m["block_size"], m["size_bytes"]
            for fr in m["frames"]:
                work.setdefault((ci, fr[0]), []).append((fr, [(fr[3], fr[4])]))
                total += min((fr[3] + fr[4]) * bs, size) - fr[3] * bs
            # Objects without frames still have to exist and match.
            for oi in range(len(m["objects"])):
                work.setdefault((ci, oi), [])
        ticker = _Ticker(total, progress, cancelled, self.check_interval_bytes)
        ticker.report(0, force=True)
        if ticker.should_cancel(0, force=True):
            raise BackupCancelled("verify cancelled")
        stats = {"written": 0, "zeroed": 0, "objects": 0, "stored": 0, "blocks": 0}
        self._run_restore(None, chain, work, ticker, 0, stats, write=False, problems=problems)
        ticker.report(total, force=True)
        for r, m in chain:   # every object in the prefix should be known
            try:
                known = {self._obj(r, o["name"]) for o in m["objects"]} | {self._obj(r, MANIFEST_NAME)}
                extra = [n for n in self.store.list(f"{r.container}/{r.prefix}/") if n not in known]
                if extra:
                    problems.append(f"unexpected objects in {r.container}/{r.prefix}: {extra[:5]}")
            except StoreError as e:
                problems.append(str(e))
        return VerifyResult(ok=not problems, objects_checked=stats["objects"],
                            stored_bytes_checked=stats["stored"],
                            logical_bytes_checked=stats["written"], blocks_checked=stats["blocks"],
                            chain=[r for r, _ in chain], problems=problems,
                            elapsed_s=time.monotonic() - t0)
