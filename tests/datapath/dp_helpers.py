"""Helpers shared by the data-path tests (imported as a plain module)."""
import os
import random
import sys
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from workers.datapath import ChunkedDriver  # noqa: E402
from workers.stores import make_store  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
S3_KEYS = {"access_key": "testing", "secret_key": "testing", "region": "us-east-1"}


def new_s3_store(endpoint):
    bucket = "dp-" + uuid.uuid4().hex[:20]
    return make_store("s3", endpoint_url=endpoint, bucket=bucket, create_bucket=True, **S3_KEYS)


def small_driver(store, **kw):
    """A driver with tiny blocks/segments/packs so small volumes exercise everything."""
    opts = dict(block_size=4 * KiB, segment_size=16 * KiB, pack_size=24 * KiB,
                max_inflight_bytes=64 * KiB, threads=2, io_threads=2)
    opts.update(kw)
    return ChunkedDriver(store, **opts)


def write_volume(path, size, extents, seed=0):
    """Sparse file of ``size`` bytes with random data at the given (offset, length)."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, ln in extents:
            f.seek(off)
            f.write(rng.randbytes(ln))
    return path


def read_file(path, size=None):
    with open(path, "rb") as f:
        return f.read() if size is None else f.read(size)


def garbage_target(path, size, seed=99):
    """A restore target full of non-zero junk (restore onto an existing volume)."""
    with open(path, "wb") as f:
        f.write(random.Random(seed).randbytes(size))
    return path


def sparse_target(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path
