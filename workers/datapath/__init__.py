"""The backup data path: volumes in, packs and manifests out, and back again.

Terms: a *block* is ``block_size`` bytes of the volume, the unit of the digests
and of incremental change; a *frame* is the compression of a run of changed
blocks; a *pack* is an object holding frames; the *manifest* lists a backup's
packs, frames and parent (:mod:`.format`). An *object name* is
``<container>/<prefix>/<name>`` (:mod:`.refs`).

Modules: ``format`` (manifest and frame types), ``codec`` (compression),
``volume_io`` (reading and writing volumes), ``catalog`` (manifests and chains in
the store), ``backup``, ``restore``, ``verify``, ``driver`` (the facade).

Imports neither Flask, Celery, SQLAlchemy nor anything from ``orchestrator``:
it takes a source or target path and an object store (:mod:`workers.stores`)
and returns results.
"""
from .driver import ChunkedDriver
from .errors import BackupCancelled
from .errors import DataPathError
from .errors import IntegrityError
from .errors import InvalidBackup
from .errors import InvalidContainer
from .errors import NotFound
from .errors import PermanentStoreError
from .errors import StoreError
from .errors import TransientStoreError
from .errors import VolumeIOError
from .format import DIGEST_LEN
from .format import FORMAT
from .format import FORMAT_VERSION
from .format import MANIFEST_NAME
from .format import Frame
from .format import Manifest
from .format import ZeroedRun
from .format import decode_manifest
from .format import encode_manifest
from .names import validate_container
from .names import validate_object_name
from .refs import BackupRef
from .results import BackupResult
from .results import RestoreResult
from .results import VerifyResult

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
    "Frame",
    "IntegrityError",
    "InvalidBackup",
    "InvalidContainer",
    "Manifest",
    "NotFound",
    "PermanentStoreError",
    "RestoreResult",
    "StoreError",
    "TransientStoreError",
    "VerifyResult",
    "VolumeIOError",
    "ZeroedRun",
    "decode_manifest",
    "encode_manifest",
    "validate_container",
    "validate_object_name",
]
