"""The backup data path: volumes in, packs and manifests out, and back again.

Terms: a *block* is ``block_size`` bytes of the volume, the unit of the digests
and of incremental change; a *frame* is the compression of a run of changed
blocks; a *pack* is an object holding frames; an *index object* lists the
*extents* of a range of the volume (which blocks lie in which frame of which
pack, possibly a pack of an earlier backup); the root *manifest* lists a
backup's index objects (format version 2, :mod:`.index`, docs/format.md).
Version 1 (:mod:`.format`) is still read. An *object name* is
``<container>/<prefix>/<name>`` (:mod:`.refs`).

Modules: ``format`` (shared and version-1 types), ``index`` (version 2),
``codec`` (compression),
``volume_io`` (reading and writing volumes), ``catalog`` (manifests and chains in
the store), ``backup``, ``restore``, ``verify``, ``driver`` (the facade).

Imports neither Flask, Celery, SQLAlchemy nor anything from ``orchestrator``:
it takes a source or target path and an object store (:mod:`workers.stores`)
and returns results.
"""
from .catalog import BackupObjects
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
from .index import Extent
from .index import RootManifest
from .index import StoredObject
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
    "BackupObjects",
    "BackupRef",
    "BackupResult",
    "ChunkedDriver",
    "DataPathError",
    "Extent",
    "Frame",
    "IntegrityError",
    "InvalidBackup",
    "InvalidContainer",
    "Manifest",
    "NotFound",
    "PermanentStoreError",
    "RestoreResult",
    "RootManifest",
    "StoreError",
    "StoredObject",
    "TransientStoreError",
    "VerifyResult",
    "VolumeIOError",
    "ZeroedRun",
    "decode_manifest",
    "encode_manifest",
    "validate_container",
    "validate_object_name",
]
