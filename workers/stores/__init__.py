"""Object stores behind one interface: a POSIX directory, S3, and memory.

``make_store(kind, **args)`` builds one from configuration; every store passes
the same conformance suite (tests/datapath/test_datapath_store_conformance.py).
"""
from typing import Any

from workers.datapath.errors import DataPathError

from .base import ObjectStore
from .memory import MemoryStore
from .posix import PosixStore
from .s3 import S3Store

__all__ = ["MemoryStore", "ObjectStore", "PosixStore", "S3Store", "make_store"]

KINDS = ("posix", "s3", "memory")


def make_store(kind: str, **options: Any) -> ObjectStore:
    """Build an object store: ``posix`` (path=...), ``s3`` (endpoint_url, bucket,
    access_key, secret_key, region="us-east-1", ...) or ``memory`` (no options).

    :raise DataPathError: for an unknown kind.
    """
    if kind == "posix":
        return PosixStore(**options)
    if kind == "s3":
        return S3Store(**options)
    if kind == "memory":
        return MemoryStore(**options)
    raise DataPathError(f"unknown object store kind {kind!r} (expected 'posix', 's3' or "
                        "'memory')")
