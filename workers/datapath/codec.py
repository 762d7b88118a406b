"""Compression codecs of the frames: ``zstd`` (the default), ``zlib`` and ``none``.

A manifest names the codec its frames were written with, so a backup is read
with its own codec whatever the reading driver is configured to write.
"""
import threading
import zlib

from .errors import DataPathError
from .errors import IntegrityError

try:  # optional at import time so that "none"/"zlib" work without it
    import zstandard
except ImportError:  # pragma: no cover
    zstandard = None

COMPRESSIONS = ("zstd", "zlib", "none")
DEFAULT_LEVELS = {"zstd": 1, "zlib": 6, "none": 0}


class Codec:
    """One compression with its level; safe to share between threads.

    zstandard's compressor and decompressor objects are not thread-safe and
    cost something to build, so each thread keeps its own pair.
    """

    def __init__(self, name: str, level: int | None = None) -> None:
        """:raise ValueError: for an unknown name; DataPathError if zstandard is missing."""
        if name not in COMPRESSIONS:
            raise ValueError(f"unknown compression {name!r} (zstd, zlib or none)")
        if name == "zstd" and zstandard is None:
            raise DataPathError("compression 'zstd' needs the zstandard package")
        self.name = name
        self.level = level if level is not None else DEFAULT_LEVELS[name]
        self._per_thread = threading.local()

    def compress(self, data: bytes | memoryview) -> bytes:
        """The compressed frame of ``data``."""
        if self.name == "zstd":
            compressor = getattr(self._per_thread, "compressor", None)
            if compressor is None:
                compressor = self._per_thread.compressor = zstandard.ZstdCompressor(
                    level=self.level)
            return compressor.compress(data)
        if self.name == "zlib":
            return zlib.compress(data, self.level)
        return bytes(data)

    def decompress(self, data: bytes | memoryview, expected_len: int) -> bytes | memoryview:
        """The ``expected_len`` bytes that frame ``data`` holds.

        :raise IntegrityError: if the frame is damaged or decompresses to another length.
        """
        try:
            if self.name == "zstd":
                decompressor = getattr(self._per_thread, "decompressor", None)
                if decompressor is None:
                    decompressor = self._per_thread.decompressor = zstandard.ZstdDecompressor()
                out = decompressor.decompress(data, max_output_size=expected_len)
            elif self.name == "zlib":
                out = zlib.decompress(data)
            else:
                out = data
        except Exception as e:
            raise IntegrityError(f"cannot decompress frame ({self.name}): {e}") from None
        if len(out) != expected_len:
            raise IntegrityError(f"frame decompressed to {len(out)} bytes, expected {expected_len}")
        return out


_shared: dict[str, Codec] = {}
_shared_lock = threading.Lock()


def reading_codec(name: str) -> Codec:
    """The codec that reads frames compressed with ``name`` (one per name and process)."""
    codec = _shared.get(name)
    if codec is None:
        with _shared_lock:
            codec = _shared.setdefault(name, Codec(name))
    return codec
