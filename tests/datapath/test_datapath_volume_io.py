"""Volume I/O: data extents, short reads past the end, zeroing a range."""
import os

from dp_helpers import KiB
from dp_helpers import MiB
from dp_helpers import read_file
from dp_helpers import write_volume

from workers.datapath.volume_io import data_extents
from workers.datapath.volume_io import pread_full
from workers.datapath.volume_io import pwrite_all
from workers.datapath.volume_io import zero_range


def _fd(path, flags=os.O_RDONLY):
    return os.open(path, flags)


def test_data_extents_skip_holes(tmp_path):
    size = 16 * MiB
    path = write_volume(str(tmp_path / "v"), size, [(2 * MiB, 64 * KiB), (9 * MiB, 1 * MiB)])
    fd = _fd(path)
    try:
        extents = list(data_extents(fd, size))
    finally:
        os.close(fd)
    covered = [(o, o + n) for o, n in extents]
    assert all(n > 0 for _o, n in extents)
    assert covered == sorted(covered)
    for offset, length in [(2 * MiB, 64 * KiB), (9 * MiB, 1 * MiB)]:   # data is inside
        assert any(s <= offset and offset + length <= e for s, e in covered)
    assert sum(n for _o, n in extents) < 4 * MiB                          # holes are not


def test_data_extents_stop_at_size_and_handle_no_data(tmp_path):
    path = write_volume(str(tmp_path / "v"), 4 * MiB, [(3 * MiB, 1 * MiB)])
    fd = _fd(path)
    try:
        assert list(data_extents(fd, 2 * MiB)) == []
        assert list(data_extents(fd, 0)) == []
    finally:
        os.close(fd)


def test_data_extents_without_seek_data_is_all_data():
    read_end, write_end = os.pipe()       # lseek fails on a pipe: everything counts as data
    try:
        assert list(data_extents(read_end, 5 * MiB)) == [(0, 5 * MiB)]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_pread_full_reads_zeros_past_the_end(tmp_path):
    path = tmp_path / "v"
    path.write_bytes(b"abc")
    fd = _fd(str(path))
    try:
        assert pread_full(fd, 8, 1) == b"bc" + bytes(6)
    finally:
        os.close(fd)


def test_zero_range_and_pwrite_all(tmp_path):
    path = str(tmp_path / "v")
    with open(path, "wb") as f:
        f.write(b"\xff" * (256 * KiB))
    fd = _fd(path, os.O_RDWR)
    try:
        zero_range(fd, 4 * KiB, 64 * KiB)
        zero_range(fd, 0, 0)                       # nothing to do
        pwrite_all(fd, memoryview(b"hello"), 100 * KiB)
    finally:
        os.close(fd)
    data = read_file(path)
    assert data[:4 * KiB] == b"\xff" * (4 * KiB)
    assert data[4 * KiB:68 * KiB] == bytes(64 * KiB)
    assert data[68 * KiB:100 * KiB] == b"\xff" * (32 * KiB)
    assert data[100 * KiB:100 * KiB + 5] == b"hello"
    assert len(data) == 256 * KiB
