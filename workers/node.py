"""This node's data-path objects, one per configuration and process.

Drivers and volume backends hold no per-job state (an S3 store builds a boto3
client, which is worth keeping); like the database engines they are forgotten
in a forked child.
"""
from __future__ import annotations

import os

from orchestrator.config import Settings
from orchestrator.operations.backups import DRIVER_ID
from workers.datapath import ChunkedDriver
from workers.stores import make_store
from workers.stores.encrypted import encrypting
from workers.volumes import FileVolumeBackend

_drivers: dict = {}
_volume_backends: dict = {}


def _forget_cached() -> None:
    _drivers.clear()
    _volume_backends.clear()


os.register_at_fork(after_in_child=_forget_cached)


def volume_backend(settings: Settings) -> FileVolumeBackend:
    backend = _volume_backends.get(settings.volume_path)
    if backend is None:
        backend = _volume_backends[settings.volume_path] = FileVolumeBackend(settings.volume_path)
    return backend


def store_args(settings: Settings) -> tuple[str, dict]:
    """The configured store: its kind and make_store's arguments.

    Unset S3 keys are None, not "": boto3 then finds credentials its own way
    (environment, shared profile, instance or container role).
    """
    if settings.backup_store == "s3":
        return "s3", dict(endpoint_url=settings.s3_endpoint_url or None,
                          bucket=settings.s3_bucket, access_key=settings.s3_access_key or None,
                          secret_key=settings.s3_secret_key or None, region=settings.s3_region)
    return "posix", dict(path=settings.backup_path)


def store_identity(settings: Settings) -> str:
    """The configured store as SQL names it in store_objects (no credentials)."""
    kind, args = store_args(settings)
    if kind == "s3":
        return f"s3:{args['endpoint_url'] or 'default'}/{args['bucket']}"
    return f"posix:{os.path.abspath(args['path'])}"


def backup_driver(settings: Settings, keyring=None) -> ChunkedDriver:
    """The chunked driver on the configured store; with ``keyring`` (an unwrapped
    orchestrator.keys.Keyring), one that encrypts every object under the project's data
    keys and keys the block digests with its identity key (a cheap copy per job)."""
    kind, args = store_args(settings)
    key = (kind, tuple(sorted(args.items())), settings.backup_compression)
    driver = _drivers.get(key)
    if driver is None:
        driver = _drivers[key] = ChunkedDriver(make_store(kind, **args),
                                               compression=settings.backup_compression,
                                               driver_id=DRIVER_ID)
    if keyring is None:
        return driver
    return encrypting(driver, keyring)
