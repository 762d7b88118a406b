"""The control halves of the backup job types: create, restore, delete, import, verify."""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from dateutil import parser as dateparser
from sqlalchemy import delete
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session

from orchestrator import keys
from orchestrator import quota
from orchestrator.models import Backup
from orchestrator.models import BackupMetadata
from orchestrator.models import Job
from orchestrator.models import Service
from orchestrator.models import Snapshot
from orchestrator.models import Volume
from orchestrator.operations.base import Operation
from orchestrator.operations.base import Params
from orchestrator.operations.base import register
from orchestrator.operations.base import truncate_reason
from orchestrator.operations.storage import released_gc
from orchestrator.persistence import backups as backup_rows
from orchestrator.persistence import objects
from orchestrator.persistence.resources import set_status
from orchestrator.states import BackupStatus
from orchestrator.states import SnapshotStatus
from orchestrator.states import VerifyStatus
from orchestrator.states import VolumeStatus

log = logging.getLogger(__name__)

# The `service` a backup written by this service names (Cinder's driver class path field).
DRIVER_ID = "orchestrator.drivers.chunked"
GiB = 1024 ** 3


def parse_time(value) -> dt.datetime | None:
    """An ISO 8601 time (or a datetime) as naive UTC; None for nothing."""
    if not value:
        return None
    parsed = dateparser.isoparse(value) if isinstance(value, str) else value
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


def _release_backup_quota(session: Session, backup: Backup, now: dt.datetime) -> None:
    quota.release(session, backup.project_id,
                  {"backups": 1, "backup_gigabytes": backup.size or 0}, now=now)


# ----------------------------------------------------------------------------- create


@dataclass(frozen=True)
class BackupCreateParams(Params):
    volume_id: str
    snapshot_id: str | None = None
    # The status the source had before it went to backing-up, to put it back exactly.
    previous_status: str | None = None
    snapshot_previous_status: str | None = None
    parent_id: str | None = None


@dataclass(frozen=True)
class BackupCreateInputs:
    """What prepare read in the claim's transaction (one statement)."""

    backup: Backup | None
    parent: Backup | None
    volume: Volume | None


@dataclass(frozen=True)
class BackupCreateOutcome:
    """What the run half wrote: the data path's result, without its manifest."""

    container: str
    prefix: str
    object_count: int
    stored_bytes: int
    logical_bytes: int
    incremental: bool
    message: str | None = None
    final_rate: float | None = None
    # The shared-block format (2): the store written to, the objects this backup wrote
    # and the names of every object its manifest references.
    data_format: int | None = None
    store: str | None = None
    new_objects: tuple[objects.ObjectInfo, ...] = ()
    referenced: tuple[str, ...] = ()
    # The project's data key the objects are sealed under (None: not encrypted).
    encryption_key_id: str | None = None


@register
class BackupCreate(Operation):
    name = "backup_create"
    params_type = BackupCreateParams
    resource_type = "backup"
    routable = True

    def release_source(self, session: Session, params: BackupCreateParams,
                       now: dt.datetime) -> None:
        """Put the backed-up volume or snapshot back exactly as it was."""
        if params.snapshot_id:
            set_status(session, Snapshot, params.snapshot_id, SnapshotStatus.BACKING_UP,
                       params.snapshot_previous_status or SnapshotStatus.AVAILABLE, now=now)
        else:
            set_status(session, Volume, params.volume_id, VolumeStatus.BACKING_UP,
                       params.previous_status or VolumeStatus.AVAILABLE, now=now,
                       previous=VolumeStatus.BACKING_UP)

    def prepare(self, session: Session, job: Job, params: BackupCreateParams
                ) -> BackupCreateInputs:
        backup, parent, volume = backup_rows.backup_parent_volume(
            session, job.resource_id, params.volume_id, params.parent_id)
        return BackupCreateInputs(backup, parent, volume)

    def record_location(self, session: Session, backup: Backup, container: str,
                        prefix: str, data_format: int | None = None) -> None:
        """Record where the objects will go before any is written, so that whatever
        happens to the worker, deleting the backup later finds and removes them."""
        backup_rows.set_location(session, backup, container=container, prefix=prefix,
                                 service=DRIVER_ID, total=(backup.size or 0) * GiB,
                                 data_format=data_format)

    def pin_parent(self, session: Session, backup: Backup, parent: Backup | None) -> int:
        """Before the data path reads the parent: reference everything it references, so
        no collection can free what the incremental is about to re-use."""
        if parent is None or parent.data_format != 2:
            return 0
        return objects.pin(session, backup.id, parent.id)

    def complete(self, session: Session, job: Job, params: BackupCreateParams,
                 outcome: BackupCreateOutcome, *, now: dt.datetime) -> None:
        is_incremental = bool(outcome.incremental and params.parent_id)
        values: dict[str, Any] = dict(
            status=BackupStatus.AVAILABLE, container=outcome.container,
            service_metadata=outcome.prefix, service=DRIVER_ID,
            object_count=outcome.object_count, stored_bytes=outcome.stored_bytes,
            progress_bytes=outcome.logical_bytes, progress_total=outcome.logical_bytes,
            updated_at=now)
        if outcome.final_rate is not None:
            values["progress_rate"] = outcome.final_rate
        if outcome.encryption_key_id:
            values["encryption_key_id"] = outcome.encryption_key_id
        if not is_incremental:
            values["parent_id"] = None
        if outcome.message:
            values["fail_reason"] = truncate_reason(outcome.message)
        if outcome.data_format == 2:
            # Raises (the job then fails, and fail() drops the pins) if the data path
            # referenced an object that was not pinned.
            objects.register(session, job.resource_id, outcome.store, new=outcome.new_objects,
                             referenced=outcome.referenced, now=now)
            values["data_format"] = 2
        if not backup_rows.finish_create(session, job.resource_id, values):
            log.warning(
                "backup %s changed status while it ran; result not applied", job.resource_id)
        if params.parent_id:
            backup_rows.count_dependents(session, params.parent_id)
        self.release_source(session, params, now)

    def fail(self, session, job, params: BackupCreateParams, reason, *, now, cancelled):
        set_status(session, Backup, job.resource_id, BackupStatus.CREATING, BackupStatus.ERROR,
                   now=now, reason=reason)
        objects.release(session, job.resource_id, now=now)
        self.release_source(session, params, now)

    def abandon(self, session, job, params: BackupCreateParams, *, now):
        self.release_source(session, params, now)
        backup = session.get(Backup, job.resource_id)
        if backup is not None:
            _release_backup_quota(session, backup, now)
            session.execute(delete(BackupMetadata).where(BackupMetadata.backup_id == backup.id))
            session.delete(backup)


# ----------------------------------------------------------------------------- restore


@dataclass(frozen=True)
class BackupRestoreParams(Params):
    volume_id: str
    volume_is_new: bool = False


@register
class BackupRestore(Operation):
    name = "backup_restore"
    params_type = BackupRestoreParams
    resource_type = "backup"
    routable = True

    TARGET_BUSY = (VolumeStatus.RESTORING_BACKUP, VolumeStatus.CREATING)

    def complete(self, session, job, params: BackupRestoreParams, outcome, *, now):
        session.execute(update(Backup).where(Backup.id == job.resource_id,
                                             Backup.status == BackupStatus.RESTORING)
                        .values(status=BackupStatus.AVAILABLE, updated_at=now))
        backup_volume_id = session.scalar(select(Backup.volume_id)
                                          .where(Backup.id == job.resource_id))
        vol = session.get(Volume, params.volume_id)
        meta = dict(vol.metadata_ or {})
        if backup_volume_id != vol.id or meta.get("src_backup_id") not in (None, job.resource_id):
            meta["src_backup_id"] = job.resource_id
        values = dict(status=VolumeStatus.AVAILABLE, metadata_=meta, updated_at=now)
        if params.volume_is_new:
            values["launched_at"] = now
        session.execute(update(Volume).where(Volume.id == vol.id,
                                             Volume.status.in_(self.TARGET_BUSY))
                        .values(**values))

    def fail(self, session, job, params: BackupRestoreParams, reason, *, now, cancelled):
        session.execute(update(Backup).where(Backup.id == job.resource_id,
                                             Backup.status == BackupStatus.RESTORING)
                        .values(status=BackupStatus.AVAILABLE, updated_at=now))
        # A cancelled restore leaves undefined data: the target is `error`, never available.
        target_status = VolumeStatus.ERROR if (cancelled or params.volume_is_new) \
            else VolumeStatus.ERROR_RESTORING
        session.execute(update(Volume).where(Volume.id == params.volume_id,
                                             Volume.status.in_(self.TARGET_BUSY))
                        .values(status=target_status, updated_at=now))

    def abandon(self, session, job, params: BackupRestoreParams, *, now):
        set_status(session, Backup, job.resource_id, BackupStatus.RESTORING,
                   BackupStatus.AVAILABLE, now=now)
        if not params.volume_is_new:
            set_status(session, Volume, params.volume_id, VolumeStatus.RESTORING_BACKUP,
                       VolumeStatus.AVAILABLE, now=now)


# ----------------------------------------------------------------------------- delete


@dataclass(frozen=True)
class BackupDeleteParams(Params):
    previous_status: str = BackupStatus.AVAILABLE
    force: bool = False
    # A force delete still runs after the job it was chained behind failed or was cancelled.
    run_after_failure: bool = False


@dataclass(frozen=True)
class BackupDeleteOutcome:
    """The store the deleted backup's objects are in (None: it had no shared objects), and
    whether to collect what it released at once (ORCH_GC_AFTER_DELETE)."""

    store: str | None = None
    collect: bool = True


@register
class BackupDelete(Operation):
    name = "backup_delete"
    params_type = BackupDeleteParams
    resource_type = "backup"
    resumable = True
    routable = True

    def complete(self, session, job, params, outcome: BackupDeleteOutcome | None, *, now):
        backup = session.get(Backup, job.resource_id)
        if session.execute(update(Backup).where(Backup.id == backup.id,
                                                Backup.status == BackupStatus.DELETING,
                                                Backup.deleted.is_(False))
                           .values(status=BackupStatus.DELETED, deleted=True,
                                   deleted_at=now)).rowcount != 1:
            return None
        session.execute(update(BackupMetadata).where(BackupMetadata.backup_id == backup.id)
                        .values(deleted=True, deleted_at=now))
        _release_backup_quota(session, backup, now)
        # Its children (a shared-block backup may be deleted whatever depends on it) now
        # build on its parent: has_dependent_backups and the counts stay true.
        session.execute(update(Backup).where(Backup.parent_id == backup.id,
                                             Backup.deleted.is_(False))
                        .values(parent_id=backup.parent_id))
        if backup.parent_id:
            backup_rows.count_dependents(session, backup.parent_id)
        # Its references go in the same transaction that marks it deleted; what nobody
        # references any more is freed by a collection queued now.
        if objects.release(session, backup.id, now=now) and outcome is not None \
                and outcome.store and outcome.collect:
            follow_up = released_gc(session, outcome.store, job.host)
            return [follow_up] if follow_up is not None else None
        return None

    def fail(self, session, job, params, reason, *, now, cancelled):
        set_status(session, Backup, job.resource_id, BackupStatus.DELETING,
                   BackupStatus.ERROR_DELETING, now=now, reason=reason)

    def abandon(self, session, job, params: BackupDeleteParams, *, now):
        set_status(session, Backup, job.resource_id, BackupStatus.DELETING,
                   params.previous_status, now=now)


# ----------------------------------------------------------------------------- import


@dataclass(frozen=True)
class BackupImportParams(Params):
    record: dict = field(default_factory=dict)
    # The id named a deleted backup whose row the import brought back.
    revived: bool = False


@dataclass(frozen=True)
class BackupImportOutcome:
    data_format: int | None = None
    # The wrapped keys the record carried, re-wrapped for the importing project
    # (orchestrator.keys.rebound_rows): registered in its keyring by the completion.
    keys: tuple[dict, ...] = ()


@register
class BackupImport(Operation):
    name = "backup_import"
    params_type = BackupImportParams
    resource_type = "backup"
    resumable = True
    routable = True

    def adopt(self, session: Session, backup_id: str, store: str,
              referenced: tuple[objects.ObjectInfo, ...], *, now) -> None:
        """Reference the imported backup's objects (before checking that they exist)."""
        objects.adopt(session, backup_id, store, referenced, now=now)

    def complete(self, session, job, params: BackupImportParams,
                 outcome: BackupImportOutcome | None, *, now):
        record = params.record
        backup = session.get(Backup, job.resource_id)
        if backup.status != BackupStatus.CREATING:
            return
        backup.data_format = outcome.data_format if outcome is not None else None
        if outcome is not None and outcome.keys:
            # Extra keys of the importing project (never current unless the record is its
            # own): it restores and verifies the backup, its new backups keep its keys.
            keys.register_imported(session, backup.project_id, list(outcome.keys),
                                   source_project_id=record.get("project_id"), now=now)
        zone = session.scalar(select(Service.availability_zone).where(
            Service.host == job.host, Service.binary == "cinder-backup"))
        backup.volume_id = record.get("volume_id") or backup.volume_id
        backup.parent_id = record.get("parent_id")
        backup.snapshot_id = record.get("snapshot_id")
        backup.display_name = record.get("display_name")
        backup.display_description = record.get("display_description")
        backup.container = record.get("container")
        backup.service_metadata = record.get("service_metadata")
        backup.service = DRIVER_ID
        backup.encryption_key_id = record.get("encryption_key_id") or None
        backup.object_count = int(record.get("object_count") or 0)
        backup.data_timestamp = parse_time(record.get("data_timestamp")) or now
        backup.created_at = parse_time(record.get("created_at")) or backup.created_at
        backup.availability_zone = zone or backup.availability_zone
        backup.host = job.host
        backup.status = BackupStatus.AVAILABLE
        backup.updated_at = now
        for key, value in (record.get("metadata") or {}).items():
            session.add(BackupMetadata(backup_id=backup.id, key=str(key), value=str(value),
                                       created_at=now))

    def fail(self, session, job, params, reason, *, now, cancelled):
        set_status(session, Backup, job.resource_id, BackupStatus.CREATING, BackupStatus.ERROR,
                   now=now, reason=reason)
        objects.release(session, job.resource_id, now=now)

    def abandon(self, session, job, params: BackupImportParams, *, now):
        backup = session.get(Backup, job.resource_id)
        if backup is None:
            return
        _release_backup_quota(session, backup, now)
        if params.revived:
            backup.deleted, backup.status, backup.deleted_at = True, BackupStatus.DELETED, now
        else:
            session.execute(delete(BackupMetadata).where(BackupMetadata.backup_id == backup.id))
            session.delete(backup)


# ----------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class BackupVerifyOutcome:
    ok: bool
    message: str


@register
class BackupVerify(Operation):
    name = "backup_verify"
    resource_type = "backup"
    routable = True

    def complete(self, session, job, params, outcome: BackupVerifyOutcome, *, now):
        session.execute(update(Backup).where(Backup.id == job.resource_id).values(
            verify_status=VerifyStatus.OK if outcome.ok else VerifyStatus.FAILED,
            verified_at=now, verify_message=truncate_reason(outcome.message)))

    def fail(self, session, job, params, reason, *, now, cancelled):
        session.execute(update(Backup).where(Backup.id == job.resource_id,
                                             Backup.verify_status == VerifyStatus.VERIFYING)
                        .values(verify_status=VerifyStatus.CANCELLED if cancelled
                                else VerifyStatus.ERROR,
                                verify_message=reason, verified_at=now))
