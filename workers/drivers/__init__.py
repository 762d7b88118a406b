"""Backup data path: object stores and the chunked backup driver.

Imports neither Flask, Celery, SQLAlchemy nor anything from ``orchestrator``.
"""
from .chunked import (DIGEST_LEN, FORMAT, FORMAT_VERSION, MANIFEST_NAME, BackupRef,
                      BackupResult, ChunkedDriver, RestoreResult, VerifyResult,
                      VolumeIOError, decode_manifest, encode_manifest)
from .errors import (BackupCancelled, DataPathError, IntegrityError, InvalidBackup,
                     InvalidContainer, NotFound, PermanentStoreError, StoreError,
                     TransientStoreError)
from .names import validate_container, validate_object_name
from .stores import ObjectStore, PosixStore, S3Store, make_store

__all__ = [
    "BackupCancelled", "BackupRef", "BackupResult", "ChunkedDriver", "DataPathError",
    "DIGEST_LEN", "FORMAT", "FORMAT_VERSION", "IntegrityError", "InvalidBackup",
    "InvalidContainer", "MANIFEST_NAME", "NotFound", "ObjectStore", "PermanentStoreError",
    "PosixStore", "RestoreResult", "S3Store", "StoreError", "TransientStoreError",
    "VerifyResult", "VolumeIOError", "decode_manifest", "encode_manifest", "make_store",
    "validate_container", "validate_object_name",
]
