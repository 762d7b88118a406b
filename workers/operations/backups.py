"""Run halves of the backup job types: the data path on this node's store."""
from __future__ import annotations

import dataclasses

from sqlalchemy import select

from orchestrator import keys
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.models import Backup
from orchestrator.models import ProjectKey
from orchestrator.models import Volume
from orchestrator.operations.backups import BackupCreateInputs
from orchestrator.operations.backups import BackupCreateOutcome
from orchestrator.operations.backups import BackupCreateParams
from orchestrator.operations.backups import BackupDeleteOutcome
from orchestrator.operations.backups import BackupImportOutcome
from orchestrator.operations.backups import BackupImportParams
from orchestrator.operations.backups import BackupRestoreParams
from orchestrator.operations.backups import BackupVerifyOutcome
from orchestrator.persistence import objects
from orchestrator.states import BackupStatus
from orchestrator.states import VolumeStatus
from workers import keyrecords
from workers.datapath import BackupRef
from workers.datapath import ChunkedDriver
from workers.datapath import DataPathError
from workers.datapath import RestoreResult
from workers.datapath.format import FORMAT_VERSION
from workers.datapath.refs import backup_prefix
from workers.faults import crash_point
from workers.jobrun import JobRun
from workers.jobrun import ProgressRecorder
from workers.node import backup_driver
from workers.node import store_identity
from workers.node import volume_backend
from workers.operations.base import RunHalf
from workers.operations.base import runs
from workers.operations.storage import free_own_leftovers

GiB = 1024 ** 3
SHARED_FORMAT = 2            # backups.data_format of the shared-block format
# What this data path writes: the shared-block format once it is version 2.
WRITTEN_FORMAT = SHARED_FORMAT if FORMAT_VERSION == SHARED_FORMAT else None


def _keyring(settings, session, project_id: str, *, create: bool = False,
             current: str | None = None) -> tuple[keys.Keyring, list[ProjectKey]]:
    """The unwrapped keyring of ``project_id`` (wrapped keys from SQL, the KEK from this
    node's settings) and the rows it came from; ``create`` makes the project's first
    keys; ``current`` is the data key the backup was assigned (a rotation since then
    does not change it).

    :raise keys.KeyError_: if there is no KEK or a key cannot be unwrapped.
    """
    provider = keys.kek_provider(settings)
    rows = keys.ensure_keys(session, provider, project_id, utcnow()) if create \
        else keys.project_rows(session, project_id)
    if not rows:
        raise keys.KeyError_(f"project {project_id} has no keys")
    ring = keys.keyring(provider, rows)
    return (dataclasses.replace(ring, current_key_id=current) if current else ring), rows


def _reading_driver(settings, rows: list[ProjectKey], data_key_id: str,
                    ref: BackupRef) -> ChunkedDriver:
    """The driver that reads the encrypted backup at ``ref`` with ``rows`` (one project's
    wrapped keys): its data key, and the identity key its manifest names (an imported
    backup names the identity key of the project that wrote it)."""
    provider = keys.kek_provider(settings)
    ring = keys.reading_keyring(provider, rows, data_key_id)
    driver = backup_driver(settings, ring)
    try:
        named = driver.read_manifest(ref).get("digest_key_id")
    except DataPathError:
        return driver                # the operation itself reports the damage
    if named and named != ring.identity_key_id and \
            any(r.key_id == named and r.purpose == keys.IDENTITY for r in rows):
        driver = backup_driver(settings, keys.reading_keyring(provider, rows, data_key_id,
                                                              named))
    return driver


def _driver_for(run: JobRun, backup: Backup) -> ChunkedDriver:
    """The driver that reads ``backup``: decrypting with its project's keys if it is
    encrypted (backups.encryption_key_id), else plain.

    :raise keys.KeyError_: if the project does not hold the backup's keys.
    """
    if not backup.encryption_key_id:
        return backup_driver(run.settings)
    with run.db.scope(write=False) as session:
        rows = keys.project_rows(session, backup.project_id)
    return _reading_driver(run.settings, rows, backup.encryption_key_id,
                           BackupRef(backup.container, backup.service_metadata))


def _infos(stored) -> tuple[objects.ObjectInfo, ...]:
    """The data path's objects as the reference counts take them."""
    return tuple(objects.ObjectInfo(o.name, o.size, o.sha256) for o in stored)


@runs
class BackupCreateRun(RunHalf):
    operation = "backup_create"

    def prepare(self, session, job, params: BackupCreateParams) -> BackupCreateInputs:
        inputs = self.control.prepare(session, job, params)
        backup = inputs.backup
        if backup is not None and backup.status == BackupStatus.CREATING:
            ref = ChunkedDriver.ref_for(backup.id, backup.container)
            self.control.record_location(session, backup, ref.container, ref.prefix,
                                         data_format=WRITTEN_FORMAT)
            # Before the data path reads the parent, in the claim's transaction.
            self.control.pin_parent(session, backup, inputs.parent)
        return inputs

    def run(self, run: JobRun, params: BackupCreateParams) -> BackupCreateOutcome:
        inputs: BackupCreateInputs = run.prepared
        backup, parent, volume = inputs.backup, inputs.parent, inputs.volume
        if backup is None or backup.status != BackupStatus.CREATING:
            raise RuntimeError(f"backup {run.job.resource_id} is "
                               f"{backup.status if backup else 'gone'}, not creating")
        volumes = volume_backend(run.settings)
        source = volumes.snapshot_path(params.snapshot_id) if params.snapshot_id \
            else volumes.volume_path(params.volume_id)
        parent_ref = BackupRef(parent.container, parent.service_metadata) if parent else None
        driver, key_id = backup_driver(run.settings), None
        if run.settings.encryption:
            # The project's keys (made on its first backup); the completion records the
            # data key on the backup.
            with run.db.scope() as session:
                ring, rows = _keyring(run.settings, session, backup.project_id, create=True)
            driver, key_id = backup_driver(run.settings, ring), ring.current_key_id
            # The store's copy of the project's wrapped keys holds this backup's keys
            # before anything is written with them (workers/keyrecords.py).
            keyrecords.ensure_record(run.settings, run.db, backup.project_id, rows=rows)
        if parent is not None and bool(parent.encryption_key_id) != run.settings.encryption:
            parent_ref = None        # encrypted on plain (or back): a full backup
        volume_meta = {"display_name": volume.display_name if volume else None,
                       "display_description": volume.display_description if volume else None,
                       "metadata": volume.metadata_ if volume else {},
                       "bootable": volume.bootable if volume else False}
        # The prepare wrote the start (0 of the size); the completion writes the end.
        progress = ProgressRecorder(run, backup.id, write_first=False, write_last=False)
        result = driver.backup(
            source, backup_id=backup.id, volume_id=backup.volume_id,
            size_bytes=(backup.size or 0) * GiB, container=backup.container,
            parent=parent_ref, volume_meta=volume_meta, progress=progress,
            cancelled=run.cancelled)
        crash_point(run.settings, "backup:written")
        return BackupCreateOutcome(
            container=result.container, prefix=result.prefix,
            object_count=result.object_count, stored_bytes=result.stored_bytes,
            logical_bytes=result.logical_bytes, incremental=result.incremental,
            message=result.message, final_rate=progress.final_rate,
            data_format=result.manifest.get("version"), store=store_identity(run.settings),
            new_objects=_infos(result.new_objects),
            referenced=tuple(o.name for o in result.referenced_objects),
            encryption_key_id=key_id)


    def lost(self, settings, job) -> None:
        """A create that died wrote some objects under its recorded prefix: delete them,
        unless the backup completed after all (then they are its data)."""
        with get_database(settings.database_url).scope(write=False) as session:
            backup = session.get(Backup, job.resource_id)
        if backup is not None and backup.status != BackupStatus.AVAILABLE and \
                backup.service_metadata:
            backup_driver(settings).delete(BackupRef(backup.container,
                                                     backup.service_metadata))


@runs
class BackupRestoreRun(RunHalf):
    operation = "backup_restore"

    def run(self, run: JobRun, params: BackupRestoreParams) -> RestoreResult:
        with run.db.scope(write=False) as session:
            backup = session.get(Backup, run.job.resource_id)
            volume = session.get(Volume, params.volume_id)
        if backup is None or backup.status != BackupStatus.RESTORING:
            raise RuntimeError(f"backup {run.job.resource_id} is not restoring")
        if volume is None or volume.status not in (VolumeStatus.RESTORING_BACKUP,
                                                   VolumeStatus.CREATING):
            raise RuntimeError(f"volume {params.volume_id} is not restoring-backup")
        volumes = volume_backend(run.settings)
        if params.volume_is_new:
            volumes.create_volume(volume.id, volume.size)  # idempotent: volume_create made it
        # The control half's completion needs nothing of it; the worker's metrics count
        # the bytes it read and wrote.
        return _driver_for(run, backup).restore(
            BackupRef(backup.container, backup.service_metadata), volumes.volume_path(volume.id),
            target_is_zeroed=params.volume_is_new, progress=ProgressRecorder(run),
            cancelled=run.cancelled)


@runs
class BackupDeleteRun(RunHalf):
    operation = "backup_delete"

    def run(self, run: JobRun, params) -> BackupDeleteOutcome:
        with run.db.scope(write=False) as session:
            backup = session.get(Backup, run.job.resource_id)
        if backup is None or backup.status != BackupStatus.DELETING:
            raise RuntimeError(f"backup {run.job.resource_id} is not deleting")
        if not backup.service_metadata:
            return BackupDeleteOutcome()
        driver = backup_driver(run.settings)
        ref = BackupRef(backup.container, backup.service_metadata)
        if backup.data_format != SHARED_FORMAT:
            driver.delete(ref)            # the chain format: every object is its own
            return BackupDeleteOutcome()
        # The shared-block format: the manifest goes first (the backup is gone for any
        # reader and for a rebuild), its references go when the job completes, and the
        # objects nobody references then are freed by a collection. What no row knows
        # under its own prefix (an interrupted attempt's leftovers) is freed now.
        driver.delete_manifest(ref)
        crash_point(run.settings, "delete:manifest_gone")
        store = store_identity(run.settings)
        free_own_leftovers(run.settings, run.db, driver, store, backup_prefix(ref))
        return BackupDeleteOutcome(store=store, collect=run.settings.gc_after_delete)


@runs
class BackupImportRun(RunHalf):
    operation = "backup_import"

    @staticmethod
    def import_driver(run: JobRun, record: dict) -> tuple[ChunkedDriver, list[dict]]:
        """The driver that reads the imported backup and the keys the import registers
        for the importing project: for an encrypted one, the wrapped keys the record
        carries, unwrapped with this node's KEK (the driver's keyring) and re-wrapped for
        the importing project (registered by the import's completion, so a failed import
        leaves none).

        :raise keys.KeyError_: if a carried key cannot be unwrapped.
        """
        if not record.get("encryption_key_id"):
            return backup_driver(run.settings), []
        provider = keys.kek_provider(run.settings)
        carried = keys.carried_rows(record, now=utcnow())
        with run.db.scope(write=False) as session:
            project_id = session.get(Backup, run.job.resource_id).project_id
        rebound = keys.rebound_rows(provider, carried, project_id)  # all unwrap, or none
        driver = _reading_driver(run.settings, carried, record["encryption_key_id"],
                                 BackupRef(record.get("container"),
                                           record.get("service_metadata")))
        return driver, rebound

    @staticmethod
    def record_keys(run: JobRun, record: dict, rebound: list[dict]) -> None:
        """Write the importing project's key record with the keys about to be registered
        (before the import completes: no backup is available with a key the store's copy
        lacks)."""
        if not rebound:
            return
        with run.db.scope(write=False) as session:
            project_id = session.get(Backup, run.job.resource_id).project_id
            held = keys.project_rows(session, project_id)
        keyrecords.ensure_record(run.settings, run.db, project_id, keys.imported_rows(
            held, rebound, project_id, source_project_id=record.get("project_id"),
            now=utcnow()))

    def run(self, run: JobRun, params: BackupImportParams) -> BackupImportOutcome:
        record = params.record
        prefix = record.get("service_metadata")
        if not prefix:
            raise ValueError("the record has no service_metadata (object prefix)")
        driver, rebound = self.import_driver(run, record)
        manifest = driver.read_manifest(BackupRef(record.get("container"), prefix))
        if manifest.get("backup_id") not in (None, record["id"]):
            raise ValueError(f"the manifest in the store belongs to backup "
                             f"{manifest.get('backup_id')}, not {record['id']}")
        # The record's size is what quota was charged and what a restore makes room for:
        # it must be the size of the volume the manifest describes.
        volume_gib = -(-int(manifest.get("size_bytes") or 0) // GiB)
        if int(record.get("size") or 0) != volume_gib:
            raise ValueError(f"the record says {record.get('size')} GiB but the backup in the "
                             f"store is of a {volume_gib} GiB volume")
        if manifest.get("version") != SHARED_FORMAT:
            self.record_keys(run, record, rebound)
            return BackupImportOutcome(keys=tuple(rebound))
        # Reference every object first (committed), then check that each exists: once
        # referenced, no collection can take it, so what is checked stays there.
        ref = BackupRef(record.get("container"), prefix)
        referenced = _infos(driver.referenced_objects(ref).objects)
        store = store_identity(run.settings)
        with run.db.scope() as session:
            self.control.adopt(session, run.job.resource_id, store, referenced, now=utcnow())
        missing = [o.name for o in referenced if not driver.store.exists(o.name)]
        if missing:
            raise ValueError(f"{len(missing)} object(s) of the backup are missing from the "
                             f"store, first {missing[0]!r}")
        self.record_keys(run, record, rebound)
        return BackupImportOutcome(data_format=SHARED_FORMAT, keys=tuple(rebound))


@runs
class BackupVerifyRun(RunHalf):
    operation = "backup_verify"

    def run(self, run: JobRun, params) -> BackupVerifyOutcome:
        with run.db.scope(write=False) as session:
            backup = session.scalar(select(Backup).where(Backup.id == run.job.resource_id))
        if backup is None or backup.deleted or not backup.service_metadata:
            raise RuntimeError(f"backup {run.job.resource_id} has no data to verify")
        result = _driver_for(run, backup).verify(
            BackupRef(backup.container, backup.service_metadata),
            progress=ProgressRecorder(run), cancelled=run.cancelled)
        if result.ok:
            message = (f"verified {result.objects_checked} objects, {result.blocks_checked} "
                       f"blocks ({result.stored_bytes_checked} stored bytes) of a chain of "
                       f"{len(result.chain)}")
        else:
            message = f"{len(result.problems)} problem(s): " + "; ".join(
                str(p) for p in result.problems[:5])
        return BackupVerifyOutcome(ok=result.ok, message=message)
