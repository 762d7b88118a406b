"""Backup data path: object stores and the chunked backup driver.

Imports neither Flask, Celery, SQLAlchemy nor anything from ``orchestrator``.
"""
from .chunked import DIGEST_LEN
from .chunked import FORMAT
from .chunked import FORMAT_VERSION
from .chunked import MANIFEST_NAME
from .chunked import BackupRef
from .chunked import BackupResult
from .chunked import ChunkedDriver
from .chunked import RestoreResult
from .chunked import VerifyResult
from .chunked import VolumeIOError
from .chunked import decode_manifest
from .chunked import encode_manifest
from .errors import BackupCancelled
from .errors import DataPathError
from .errors import IntegrityError
from .errors import InvalidBackup
from .errors import InvalidContainer
from .errors import NotFound
from .errors import PermanentStoreError
from .errors import StoreError
from .errors import TransientStoreError
from .names import validate_container
from .names import validate_object_name
from .stores import ObjectStore
from .stores import PosixStore
from .stores import S3Store
from .stores import make_store

__all__ = [
                      "DIGEST_LEN",
                      "FORMAT",
                      "FORMAT_VERSION",
                      "MANIFEST_NAME",
                      "BackupCancelled",
                      "BackupRef",
                      "BackupResult",
                      "ChunkedDriver",
                      "DataPathError",
                      "IntegrityError",
                      "InvalidBackup",
                      "InvalidContainer",
                      "NotFound",
                      "ObjectStore",
                      "PermanentStoreError",
                      "PosixStore",
                      "RestoreResult",
                      "S3Store",
                      "StoreError",
                      "TransientStoreError",
                      "VerifyResult",
                      "VolumeIOError",
                      "decode_manifest",
                      "encode_manifest",
                      "make_store",
                      "validate_container",
                      "validate_object_name",
]
