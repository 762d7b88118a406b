"""Reading the source volume and writing the restore target, by file descriptor.

A volume is a file or a block device of ``size`` bytes. Ranges past its end
read as zeros (a volume may be shorter than the size the caller backs up), holes
are found with ``SEEK_DATA``/``SEEK_HOLE`` and never read, and a range is made
zero by punching a hole where the file system can, so a restored volume stays
as sparse as the original.
"""
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator

MiB = 1024 * 1024

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10
_SYNC_FILE_RANGE_WRITE = 2
_ZERO_CHUNK = bytes(4 * MiB)

_libc = None
_sync_file_range_works = True


def _get_libc() -> ctypes.CDLL:
    """libc with the prototypes of the two calls os does not offer."""
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        lib.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        lib.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_uint]
        _libc = lib
    return _libc


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its ``mode`` flags (os.posix_fallocate has none).

    :raise OSError: if the file system refuses.
    """
    if _get_libc().fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing the dirty pages of a range now, so the final fsync has little left.

    sync_file_range(SYNC_FILE_RANGE_WRITE); after the first failure (a file
    system or platform without it) it is a no-op.
    """
    global _sync_file_range_works
    if not _sync_file_range_works:
        return
    try:
        if _get_libc().sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE) != 0:
            _sync_file_range_works = False
    except (AttributeError, OSError):
        _sync_file_range_works = False


def zero_range(fd: int, offset: int, length: int) -> None:
    """Make [offset, offset+length) read as zeros: punch a hole, else write zeros.

    :raise OSError: if writing the zeros fails.
    """
    if length <= 0:
        return
    for mode in (_FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, _FALLOC_FL_ZERO_RANGE):
        try:
            fallocate(fd, mode, offset, length)
            return
        except (OSError, AttributeError):
            continue
    end = offset + length
    while offset < end:
        count = min(len(_ZERO_CHUNK), end - offset)
        pwrite_all(fd, memoryview(_ZERO_CHUNK)[:count], offset)
        offset += count


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (pwrite may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def pread_full(fd: int, length: int, offset: int) -> bytes:
    """Read ``length`` bytes at ``offset``; whatever lies past the end of file reads as zeros."""
    buf = os.pread(fd, length, offset)
    if len(buf) == length:
        return buf
    parts = [buf]
    got = len(buf)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:   # past EOF: the volume reads as zeros there
            parts.append(bytes(length - got))
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """Yield (offset, length) of the regions of [0, size) that may hold data, in order.

    Holes are left out. Where the file system cannot say (no ``SEEK_DATA``, or
    a device that refuses it), everything from there on counts as data: that is
    slower, never wrong.
    """
    position = 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:        # only a hole after position
                return
            yield position, size - position   # no SEEK_DATA support: all data
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
        yield start, end - start
        position = end


def pread_into(fd: int, buf: bytearray | memoryview, length: int, offset: int) -> None:
    """Fill ``buf[:length]`` from ``offset``; whatever lies past the end of file reads as
    zeros. Reads into the caller's (reused) buffer: no allocation per read."""
    view = memoryview(buf)[:length]
    got = 0
    while got < length:
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:   # past EOF: the volume reads as zeros there
            view[got:] = bytes(length - got)
            return
        got += n


_M_MMAP_THRESHOLD = -3          # glibc's mallopt parameter
_HEAP_LIMITED = False


def limit_heap_growth(threshold: int = MiB) -> None:
    """Serve every allocation of ``threshold`` bytes or more with its own mapping, given
    back when it is freed (glibc ``mallopt(M_MMAP_THRESHOLD)``; once per process).

    The pipelines allocate megabyte-sized buffers in several threads (compressed
    frames, fetched objects). By default glibc raises its mmap threshold after the
    first such free and then serves them from per-thread heaps, whose fragmentation
    grows the RSS with the amount of data a process has moved; a fixed threshold
    keeps the RSS flat. Elsewhere than glibc this is a no-op.
    """
    global _HEAP_LIMITED
    if _HEAP_LIMITED:
        return
    _HEAP_LIMITED = True
    try:
        _get_libc().mallopt(_M_MMAP_THRESHOLD, int(threshold))
    except (AttributeError, OSError, TypeError):
        pass
