"""The backup API: every rule of Cinder's backup service, free of Flask and Celery.

Each function takes a session, a request context, the settings and ``now``;
it validates, changes rows with compare-and-swap updates, charges quota in
the same transaction, and returns the jobs that the caller dispatches after
committing. Errors are ``orchestrator.errors`` classes.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re

from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator import errors
from orchestrator import hosts
from orchestrator import jobs
from orchestrator import keys
from orchestrator import paging
from orchestrator import policy
from orchestrator import quota
from orchestrator import volumes
from orchestrator.config import Settings
from orchestrator.context import RequestContext
from orchestrator.models import NULL_VOLUME_ID
from orchestrator.models import Backup
from orchestrator.models import BackupMetadata
from orchestrator.models import Job
from orchestrator.models import Snapshot
from orchestrator.models import Volume
from orchestrator.models import new_id
from orchestrator.operations.backups import DRIVER_ID
from orchestrator.operations.backups import BackupCreateParams
from orchestrator.operations.backups import BackupDeleteParams
from orchestrator.operations.backups import BackupImportParams
from orchestrator.operations.backups import BackupRestoreParams
from orchestrator.operations.backups import parse_time
from orchestrator.persistence import backups as backup_rows
from orchestrator.persistence.resources import set_status
from orchestrator.states import ACTIVE_JOB_STATES
from orchestrator.states import BackupStatus
from orchestrator.states import JobState
from orchestrator.states import SnapshotStatus
from orchestrator.states import VerifyStatus
from orchestrator.states import VolumeStatus

CONTAINER_RE = re.compile(r"[A-Za-z0-9._/-]{1,255}")
RESET_STATUSES = (BackupStatus.AVAILABLE, BackupStatus.ERROR)
SORT_KEYS = {"id", "status", "size", "availability_zone", "created_at", "updated_at",
             "display_name", "volume_id", "data_timestamp", "container", "object_count",
             "display_description", "snapshot_id", "parent_id", "user_id", "project_id"}


def validate_container(container: str | None) -> str | None:
    """Containers are relative paths of [A-Za-z0-9._/-], every component non-empty and not
    `.` or `..` (fixes Cinder's W19): exactly what the data path's stores accept, so a
    create the API takes is never refused by the worker.

    :raises InvalidInput:
    """
    if container is None or container == "":
        return None
    if not CONTAINER_RE.fullmatch(container) or \
            any(part in ("", ".", "..") for part in container.split("/")):
        raise errors.InvalidInput(
            f"Invalid input received: container '{container}' must be a relative path of "
            "letters, digits, '.', '_', '-' and '/', without empty, '.' or '..' components.")
    if container.split("/", 1)[0] == keys.KEY_RECORD_ROOT:
        raise errors.InvalidInput(
            f"Invalid input received: container '{container}' is reserved: the store keeps "
            f"the projects' key records under '{keys.KEY_RECORD_ROOT}/'.")
    return container


# ----------------------------------------------------------------------------- reads


def get_backup(session: Session, ctx: RequestContext, backup_id: str) -> Backup:
    """A visible backup (admins see every project). :raises BackupNotFound:"""
    backup = session.get(Backup, backup_id)
    if backup is None or backup.deleted or \
            (not ctx.is_admin and backup.project_id != ctx.project_id):
        raise errors.BackupNotFound(backup_id)
    return backup


def backup_view_rows(session, ctx: RequestContext, *, all_tenants: bool = False,
                     with_metadata: bool = False, **kw) -> tuple[list, dict, int | None]:
    """The read model of a backup list: (rows with has_dependents, metadata by id, count).

    One query per page whatever its size (the count only when asked for): no
    ORM objects, no N+1.

    :raises MarkerNotFound, InvalidInput:
    """
    scope = None if (ctx.is_admin and all_tenants) else ctx.project_id
    columns = backup_rows.view_columns(session, with_metadata)
    rows, count = paging.list_rows(session, Backup, scope_project=scope, sort_keys=SORT_KEYS,
                                   extra_columns=columns, as_rows=True, **kw)
    metadata = {r.id: r.metadata_items or {} for r in rows} if with_metadata else {}
    return rows, metadata, count


def backup_view_row(session, ctx: RequestContext, backup_id: str, *,
                    with_metadata: bool = False):
    """(row with has_dependents, metadata) of one visible backup. :raises BackupNotFound:"""
    row = backup_rows.view_row(session, backup_id, with_metadata=with_metadata,
                               project_id=None if ctx.is_admin else ctx.project_id)
    if row is None:
        raise errors.BackupNotFound(backup_id)
    return row, ((row.metadata_items or {}) if with_metadata else {})


def active_operation(session: Session, backup: Backup, *, lock: bool = False) -> Job | None:
    """The job currently working on a backup, if any.

    With ``lock`` its row is locked (PostgreSQL): jobs are locked before the
    resources they work on, in every path (the worker's claim and finish lock
    the job first too), so two of them can never wait on each other.
    """
    query = select(Job).where(Job.resource_id == backup.id, Job.state.in_(ACTIVE_JOB_STATES))
    if lock:
        query = query.with_for_update()
    return session.scalar(query.order_by(Job.created_at.desc()).limit(1))


def _lock_backup(session: Session, backup_id: str):
    """Lock a backup's row (PostgreSQL; SQLite's writers are serialised already) and
    return its status and deleted flag as they are now."""
    return session.execute(select(Backup.status, Backup.deleted)
                           .where(Backup.id == backup_id).with_for_update()).one()


# ----------------------------------------------------------------------------- create

def _choose_parent(session: Session, ctx: RequestContext, volume_id: str,
                   snapshot_created_at: dt.datetime | None) -> Backup:
    candidates = session.scalars(select(Backup).where(
        Backup.volume_id == volume_id, Backup.project_id == ctx.project_id,
        Backup.deleted.is_(False))).all()
    if not candidates:
        raise _no_parent()
    minimum = dt.datetime.min
    eligible = [b for b in candidates if b.status == BackupStatus.AVAILABLE and (
        snapshot_created_at is None or (b.data_timestamp or minimum) < snapshot_created_at)]
    parent = max(eligible, key=lambda b: (b.data_timestamp or minimum, b.created_at, b.id)) \
        if eligible else None
    # The parent stays locked until the incremental's row is committed: a delete of the
    # parent waits for it and then sees the child (and a delete that came first is seen
    # here as the parent's new status).
    if parent is None or _lock_backup(session, parent.id) != (BackupStatus.AVAILABLE, False):
        raise _no_parent()
    return parent


def _no_parent() -> errors.InvalidBackup:
    return errors.InvalidBackup("Invalid backup: No backups available to do an incremental "
                                "backup.")


def create_backup(session: Session, ctx: RequestContext, settings: Settings, *, volume_id: str,
                  now: dt.datetime, snapshot_id: str | None = None, container: str | None = None,
                  name: str | None = None, description: str | None = None,
                  incremental: bool = False, force: bool = False, metadata: dict | None = None,
                  availability_zone: str | None = None, policy_id: str | None = None
                  ) -> tuple[Backup, list[Job]]:
    """Validate, charge quota, mark the source busy and queue the backup job.

    ``policy_id`` attributes the backup to the backup policy whose run makes it
    (orchestrator/policies/): scheduled backups take exactly this path.

    :raises VolumeNotFound, SnapshotNotFound, InvalidVolume, InvalidSnapshot,
        InvalidBackup, OverQuota, NoLiveHost:
    """
    container = validate_container(container)
    volume = volumes.volume_row(session, ctx, volume_id)
    snapshot = None
    if snapshot_id:
        snapshot = volumes.get_snapshot(session, ctx, snapshot_id)
        if snapshot.volume_id != volume.id:
            raise errors.InvalidVolume(f"Invalid volume: Snapshot {snapshot.id} is not a "
                                       f"snapshot of volume {volume.id}.")
        if snapshot.status != SnapshotStatus.AVAILABLE:
            raise errors.InvalidSnapshot(f"Invalid snapshot: Snapshot {snapshot.id} status must "
                                         f"be available, but current status is: "
                                         f"{snapshot.status}.")
    else:
        if volume.status not in (VolumeStatus.AVAILABLE, VolumeStatus.IN_USE):
            raise errors.InvalidVolume(f"Invalid volume: Volume {volume.id} to be backed up must"
                                       f" be available or in-use, but the current status is "
                                       f"\"{volume.status}\".")
        if volume.status == VolumeStatus.IN_USE and not force:
            raise errors.InvalidVolume(f"Invalid volume: Backing up an in-use volume {volume.id}"
                                       " must use the force flag.")
    if availability_zone:
        hosts.check_zone(session, availability_zone)
    az = availability_zone or volume.availability_zone
    host = hosts.select_host(session, hosts.BACKUP_BINARY, now=now,
                             down_time=settings.service_down_time, az=az,
                             preferred=volume.host, use_same_host=settings.backup_use_same_host)
    parent = None
    if incremental:
        # Quota is Cinder's step before the parent choice: an over-quota incremental with no
        # parent is a 413, not a 400. (Checked here, charged at the end: see below.)
        quota.check(session, ctx.project_id, {"backups": 1, "backup_gigabytes": volume.size},
                    settings)
        parent = _choose_parent(session, ctx, volume.id,
                                snapshot.created_at if snapshot else None)
    if snapshot is not None:
        if set_status(session, Snapshot, snapshot.id, SnapshotStatus.AVAILABLE,
                      SnapshotStatus.BACKING_UP, now=now) != 1:
            raise errors.InvalidSnapshot(f"Invalid snapshot: Snapshot {snapshot.id} changed "
                                         "status concurrently; try again.")
        params = BackupCreateParams(volume_id=volume.id, snapshot_id=snapshot.id,
                                    snapshot_previous_status=SnapshotStatus.AVAILABLE,
                                    parent_id=parent.id if parent else None)
    else:
        previous = volume.status
        if set_status(session, Volume, volume.id, previous, VolumeStatus.BACKING_UP, now=now,
                      previous=previous) != 1:
            raise errors.InvalidVolume(f"Invalid volume: Volume {volume.id} changed status "
                                       "concurrently; try again.")
        params = BackupCreateParams(volume_id=volume.id, previous_status=previous,
                                    parent_id=parent.id if parent else None)
    values = dict(
        id=new_id(), user_id=ctx.user_id, project_id=ctx.project_id, volume_id=volume.id,
        snapshot_id=snapshot.id if snapshot else None, status=BackupStatus.CREATING,
        container=container,
        display_name=name, display_description=description, availability_zone=az, host=host,
        size=volume.size, parent_id=parent.id if parent else None, created_at=now,
        data_timestamp=snapshot.created_at if snapshot else now, object_count=0,
        num_dependent_backups=0, progress_bytes=0, progress_total=0, deleted=False,
        policy_id=policy_id)
    backup_rows.insert_backup(session, values, metadata, now)
    job = jobs.insert(session, "backup_create", resource_id=values["id"], host=host,
                      project_id=ctx.project_id, params=params, now=now)
    # Last, so that the project's usage rows stay locked only until the commit that follows.
    quota.charge(session, ctx.project_id, {"backups": 1, "backup_gigabytes": volume.size},
                 settings, now=now, counted=True)
    return Backup(**values), [job]


# ----------------------------------------------------------------------------- update


def update_backup(session: Session, ctx: RequestContext, backup_id: str, *,
                  fields: dict, now: dt.datetime) -> Backup:
    """Change name, description and (whole-set) metadata; allowed in any status."""
    backup = get_backup(session, ctx, backup_id)
    if "metadata" in fields and fields["metadata"] is None:
        raise errors.InvalidInput("Invalid input received: metadata must be an object, "
                                  "not null.")
    if "name" in fields:
        backup.display_name = fields["name"]
    if "description" in fields:
        backup.display_description = fields["description"]
    if "metadata" in fields:
        new = dict(fields["metadata"] or {})
        for item in list(backup.metadata_items):
            if item.key not in new:
                item.deleted, item.deleted_at = True, now
            elif item.value != new[item.key]:
                item.value = new.pop(item.key)
            else:
                new.pop(item.key)
        for key, value in new.items():
            session.add(BackupMetadata(backup_id=backup.id, key=key, value=value, created_at=now))
    backup.updated_at = now
    session.flush()
    session.refresh(backup)
    return backup


# ----------------------------------------------------------------------------- delete


def _has_children(session: Session, backup: Backup) -> bool:
    # Children in any project count (Cinder only looks in the caller's: W12).
    return session.scalar(select(Backup.id).where(Backup.parent_id == backup.id,
                                                  Backup.deleted.is_(False)).limit(1)) is not None


def _check_children(session: Session, settings: Settings, backup: Backup,
                    any_backup: bool) -> None:
    """Cinder's rule: a backup with incremental children cannot be deleted. A backup of the
    shared-block format can when the deployment allows it (ORCH_BACKUP_DELETE_ANY) or the
    caller is retention (``any_backup``): its children do not need its data.

    :raises InvalidBackup: Cinder's fault, saying why when any backup could be deleted
        but this one's children need its data (the chain format).
    """
    wanted_any = any_backup or settings.backup_delete_any
    if backup.data_format == 2 and wanted_any:
        return
    if _has_children(session, backup):
        raise errors.InvalidBackup(_HAS_CHILDREN + (_CHAIN_FORMAT if wanted_any else ""))


_HAS_CHILDREN = "Invalid backup: Incremental backups exist for this backup."
_CHAIN_FORMAT = (" It was written in the chain format, whose incrementals need its data:"
                 " delete them first.")


def _backup_host(session: Session, settings: Settings, backup: Backup, now: dt.datetime) -> str:
    """A live backup host for a job on an existing backup (delete, restore, verify).

    :raises ServiceNotFound: Cinder's 404 when none is alive.
    """
    try:
        return hosts.select_host(session, hosts.BACKUP_BINARY, now=now,
                                 down_time=settings.service_down_time,
                                 az=backup.availability_zone, preferred=backup.host,
                                 use_same_host=settings.backup_use_same_host)
    except errors.NoLiveHost:
        raise errors.ServiceNotFound(hosts.BACKUP_BINARY) from None


def delete_backup(session: Session, ctx: RequestContext, settings: Settings, backup_id: str, *,
                  now: dt.datetime, any_backup: bool = False) -> list[Job]:
    """Queue the deletion of an available or failed backup.

    ``any_backup``: delete it even if incrementals build on it, when its format allows
    (retention uses it whatever ORCH_BACKUP_DELETE_ANY says).

    :raises BackupNotFound, InvalidBackup, NoLiveHost:
    """
    backup = get_backup(session, ctx, backup_id)
    if backup.status not in (BackupStatus.AVAILABLE, BackupStatus.ERROR):
        raise errors.InvalidBackup("Invalid backup: Backup status must be available or error")
    _check_children(session, settings, backup, any_backup)
    host = _backup_host(session, settings, backup, now)
    previous = backup.status  # read before the CAS: the ORM syncs the object after it
    if session.execute(update(Backup).where(Backup.id == backup.id, Backup.status == previous)
                       .values(status=BackupStatus.DELETING, host=host,
                               updated_at=now)).rowcount != 1:
        raise errors.InvalidBackup("Invalid backup: Backup status must be available or error")
    # Again with the row locked: an incremental committed meanwhile is seen now.
    _check_children(session, settings, backup, any_backup)
    return [jobs.create(session, "backup_delete", resource_id=backup.id, host=host,
                        project_id=backup.project_id,
                        params=BackupDeleteParams(previous_status=previous), now=now)]


def force_delete_backup(session: Session, ctx: RequestContext, settings: Settings,
                        backup_id: str, *, now: dt.datetime) -> list[Job]:
    """Delete a backup in any status, cancelling whatever runs on it (admin).

    A running job is asked to stop (it checks at least every 64 MiB, removes
    what it wrote and restores its source); the delete is chained after it.

    :raises BackupNotFound, PolicyNotAuthorized, InvalidBackup, NoLiveHost:
    """
    backup = get_backup(session, ctx, backup_id)
    policy.authorize(ctx, "volume_extension:backup_admin_actions:force_delete")
    _check_children(session, settings, backup, False)
    if backup.status == BackupStatus.DELETING and active_operation(session, backup) is not None:
        return []  # already being deleted
    host = _backup_host(session, settings, backup, now)
    previous = backup.status
    running = active_operation(session, backup, lock=True)  # the job first, then the backup
    session.execute(update(Backup).where(Backup.id == backup.id)
                    .values(status=BackupStatus.DELETING, host=host, updated_at=now))
    _check_children(session, settings, backup, False)  # again with the row locked
    delete_job = jobs.create(session, "backup_delete", resource_id=backup.id, host=host,
                             project_id=backup.project_id,
                             params=BackupDeleteParams(previous_status=previous, force=True,
                                                       run_after_failure=True),
                             state=JobState.WAITING if running else JobState.QUEUED, now=now)
    to_dispatch = [delete_job]
    if running is not None:
        if running.state in (JobState.QUEUED, JobState.WAITING):
            # Never started: cancel it here and undo its effects, then delete at once.
            if jobs.end_unstarted(session, running, JobState.CANCELLED, now=now,
                                  error="force deleted"):
                jobs.on_failure(session, running, "cancelled by force delete", now=now,
                                cancelled=True)
            session.execute(update(Backup).where(Backup.id == backup.id)
                            .values(status=BackupStatus.DELETING))
            delete_job.state = JobState.QUEUED
            delete_job.dispatched_at = now
        elif session.execute(update(Job).where(Job.id == running.id, Job.state == JobState.RUNNING)
                             .values(cancel_requested=True, next_job_id=delete_job.id)
                             ).rowcount == 1:
            to_dispatch = []  # the running job queues the delete when it stops
        else:  # it finished in the meantime: delete at once
            delete_job.state = JobState.QUEUED
            delete_job.dispatched_at = now
    return to_dispatch


# ----------------------------------------------------------------------------- restore


def restore_backup(session: Session, ctx: RequestContext, settings: Settings, backup_id: str, *,
                   volume_id: str | None, name: str | None, now: dt.datetime,
                   new_volume: dict | None = None) -> tuple[dict, list[Job]]:
    """Restore into an existing volume, or into a new one created first (a job chain).

    ``new_volume`` overrides the new volume's attributes (size, description,
    availability_zone, metadata, volume_type): create-volume-from-backup.

    :raises BackupNotFound, VolumeNotFound, InvalidBackup, InvalidVolume,
        OverQuota, NoLiveHost:
    """
    backup = get_backup(session, ctx, backup_id)
    if backup.status != BackupStatus.AVAILABLE:
        raise errors.InvalidBackup("Invalid backup: Backup status must be available")
    if backup.size is None:
        raise errors.InvalidBackup(f"Invalid backup: Backup {backup.id} has no size.")
    to_dispatch: list[Job] = []
    volume = volumes.get_volume(session, ctx, volume_id) if volume_id else None
    # The target is checked before a host is chosen (a bad target is a 400 whatever the
    # fleet's state).
    if volume is not None:
        if volume.status != VolumeStatus.AVAILABLE:
            raise errors.InvalidVolume(f"Invalid volume: Volume to be restored to must be "
                                       f"available, but the current status is {volume.status}.")
        if volume.size < backup.size:
            raise errors.InvalidVolume(
                f"Invalid volume: volume size {volume.size} is smaller than backup size "
                f"{backup.size}.")
    host = _backup_host(session, settings, backup, now)
    if volume is not None:
        if set_status(session, Volume, volume.id, VolumeStatus.AVAILABLE,
                      VolumeStatus.RESTORING_BACKUP, now=now) != 1:
            raise errors.InvalidVolume(f"Invalid volume: Volume {volume.id} changed status "
                                       "concurrently; try again.")
        volume_is_new = False
        restore_state = JobState.QUEUED
    else:
        # The new volume goes to the default zone unless the request names one (Cinder).
        attrs = {"size": backup.size, "description": "auto-created_from_restore_from_backup",
                 "availability_zone": None, "metadata": None,
                 "volume_type": None, **(new_volume or {})}
        if attrs["size"] < backup.size:
            raise errors.InvalidVolume(f"Invalid volume: volume size {attrs['size']} is smaller"
                                       f" than backup size {backup.size}.")
        volume, create_job = volumes.new_volume(
            session, ctx, settings, name=name or f"restore_backup_{backup.id}", now=now,
            then_status=VolumeStatus.RESTORING_BACKUP, **attrs)
        volume_is_new = True
        restore_state = JobState.WAITING
        to_dispatch.append(create_job)
    if session.execute(update(Backup).where(Backup.id == backup.id,
                                            Backup.status == BackupStatus.AVAILABLE)
                       .values(status=BackupStatus.RESTORING, restore_volume_id=volume.id,
                               host=host, updated_at=now)).rowcount != 1:
        raise errors.InvalidBackup("Invalid backup: Backup status must be available")
    restore_job = jobs.create(session, "backup_restore", resource_id=backup.id, host=host,
                              project_id=ctx.project_id, state=restore_state,
                              params=BackupRestoreParams(volume_id=volume.id,
                                                         volume_is_new=volume_is_new),
                              now=now)
    if volume_is_new:
        jobs.chain(to_dispatch[0], restore_job)
    else:
        to_dispatch.append(restore_job)
    return ({"backup_id": backup.id, "volume_id": volume.id,
             "volume_name": volume.display_name}, to_dispatch)


# ----------------------------------------------------------------------------- admin actions


def _data_complete(session: Session, backup_id: str) -> bool:
    """Whether the backup's objects are all there: its create (or import) succeeded and
    no delete has started on it since."""
    last = session.execute(
        select(Job.op, Job.state).where(
            Job.resource_id == backup_id,
            Job.op.in_(("backup_create", "backup_import", "backup_delete")),
            (Job.op != "backup_delete") | Job.started_at.is_not(None))
        .order_by(Job.created_at.desc()).limit(1)).first()
    return last is not None and last.op != "backup_delete" and last.state == JobState.SUCCEEDED


def reset_status(session: Session, ctx: RequestContext, backup_id: str, status: str, *,
                 now: dt.datetime) -> list[Job]:
    """Set a backup to available or error whatever it was doing (admin).

    Every job on it ends: a running one is asked to stop (its completion cannot
    undo the reset: every completion is a compare-and-swap), a queued or
    waiting one is cancelled here with its failure handling, so nothing runs
    later on what the administrator released. A backup goes to ``available``
    only if its data is complete. Returns jobs to dispatch (a force delete
    chained after a cancelled job still runs).

    :raises BackupNotFound, PolicyNotAuthorized, InvalidBackup:
    """
    backup = get_backup(session, ctx, backup_id)
    policy.authorize(ctx, "volume_extension:backup_admin_actions:reset_status")
    status = (status or "").lower()
    if status not in RESET_STATUSES:
        raise errors.InvalidBackup(f"Invalid backup: Backup status: {status} is invalid, valid "
                                   f"statuses are: ['available', 'error'].")
    if status == BackupStatus.AVAILABLE and not _data_complete(session, backup.id):
        raise errors.InvalidBackup(
            f"Invalid backup: Backup {backup.id} has no complete data (it was never created "
            "successfully, or a delete has started on it); it can only be reset to error.")
    to_dispatch: list[Job] = []
    # Jobs first, then the backup: the lock order of every path.
    active = session.scalars(select(Job).where(Job.resource_id == backup.id,
                                               Job.state.in_(ACTIVE_JOB_STATES))
                             .with_for_update()).all()
    for job in active:
        if job.state == JobState.RUNNING:
            session.execute(update(Job).where(Job.id == job.id).values(cancel_requested=True))
            continue
        if jobs.end_unstarted(session, job, JobState.CANCELLED, now=now,
                              error="cancelled by a status reset"):
            to_dispatch.extend(jobs.on_failure(session, job, "cancelled by a status reset",
                                               now=now, cancelled=True))
    session.execute(update(Backup).where(Backup.id == backup.id).values(
        status=status, updated_at=now,
        fail_reason="reset to error by an administrator" if status == BackupStatus.ERROR
        else None))
    session.expire(backup)
    return to_dispatch


def verify_backup(session: Session, ctx: RequestContext, settings: Settings, backup_id: str, *,
                  now: dt.datetime) -> list[Job]:
    """Queue a re-read of every object of an available backup, checking every digest (admin).

    The backup stays available; the result is recorded on it (verify_status).

    :raises BackupNotFound, PolicyNotAuthorized, InvalidBackup, NoLiveHost:
    """
    backup = get_backup(session, ctx, backup_id)
    policy.authorize(ctx, "backup:verify")
    if backup.status != BackupStatus.AVAILABLE:
        raise errors.InvalidBackup(f"Invalid backup: Backup status must be available to verify,"
                                   f" but it is {backup.status}.")
    if active_operation(session, backup) is not None:
        raise errors.InvalidBackup(f"Invalid backup: Backup {backup.id} has an operation in "
                                   "progress; verify it afterwards.")
    host = _backup_host(session, settings, backup, now)
    backup.verify_status = VerifyStatus.VERIFYING
    backup.verify_message = None
    return [jobs.create(session, "backup_verify", resource_id=backup.id, host=host,
                        project_id=backup.project_id, now=now)]


EXPORT_FIELDS = ("id", "user_id", "project_id", "volume_id", "host", "availability_zone",
                 "container", "parent_id", "status", "fail_reason", "size", "display_name",
                 "display_description", "service_metadata", "service", "object_count",
                 "temp_volume_id", "temp_snapshot_id", "num_dependent_backups", "snapshot_id",
                 "data_timestamp", "restore_volume_id", "encryption_key_id", "created_at",
                 "updated_at", "deleted_at", "deleted")


def export_record(session: Session, ctx: RequestContext, settings: Settings, backup_id: str
                  ) -> dict:
    """The base64 record that import_record takes (admin). :raises InvalidBackup:"""
    backup = get_backup(session, ctx, backup_id)
    policy.authorize(ctx, "backup:export-import")
    if backup.status != BackupStatus.AVAILABLE:
        raise errors.InvalidBackup("Invalid backup: Backup status must be available and not "
                                   f"{backup.status}.")
    record: dict = {}
    for key in EXPORT_FIELDS:
        value = getattr(backup, key)
        record[key] = value.isoformat() if isinstance(value, dt.datetime) else value
    record["metadata"] = backup.metadata_dict
    record["driver_info"] = {"store": settings.backup_store, "format": "chunked-v1"}
    if backup.encryption_key_id:
        # Only wrapped keys: a deployment with the same KEK can import and restore.
        record["encryption"] = {"keys": keys.export_rows(
            keys.project_rows(session, backup.project_id))}
    url = base64.b64encode(json.dumps(record, sort_keys=True).encode()).decode()
    return {"backup_service": backup.service or DRIVER_ID, "backup_url": url}


UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
METADATA_KEY_RE = re.compile(r"[a-zA-Z0-9-_:. /]{1,255}")
METADATA_MAX_ITEMS = 128
NAME_MAX = 255
# Sizes in GiB and counts beyond what the usage columns hold are nobody's backup.
RECORD_INT_MAX = 2**31 - 1


def _check_record(record: dict) -> tuple[str, int, str | None]:
    """Every field of an exported record checked as a create checks its own.

    Returns (id, size, container). :raises ValueError, TypeError, InvalidInput:
    """
    backup_uuid = record["id"]
    if not isinstance(backup_uuid, str) or not UUID_RE.fullmatch(backup_uuid):
        raise ValueError(f"id {backup_uuid!r} is not a UUID")
    size = record["size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= RECORD_INT_MAX:
        raise ValueError(f"size {size!r} is not a whole number of GiB")
    for key in ("volume_id", "snapshot_id", "parent_id"):
        value = record.get(key)
        if value is not None and (not isinstance(value, str) or not UUID_RE.fullmatch(value)):
            raise ValueError(f"{key} {value!r} is not a UUID")
    for key in ("display_name", "display_description", "service_metadata"):
        value = record.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > NAME_MAX):
            raise ValueError(f"{key} must be a string of at most {NAME_MAX} characters")
    count = record.get("object_count") or 0
    if isinstance(count, bool) or not isinstance(count, int) or \
            not 0 <= count <= RECORD_INT_MAX:
        raise ValueError(f"object_count {count!r} is not a count")
    for key in ("created_at", "data_timestamp"):
        if record.get(key) is not None:
            if not isinstance(record[key], str):
                raise ValueError(f"{key} is not a time")
            parse_time(record[key])
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict) or len(metadata) > METADATA_MAX_ITEMS:
        raise ValueError(f"metadata must be an object of at most {METADATA_MAX_ITEMS} items")
    for key, value in metadata.items():
        if not METADATA_KEY_RE.fullmatch(key) or not isinstance(value, str) or \
                len(value) > NAME_MAX:
            raise ValueError(f"metadata item {key!r} is not a key of at most {NAME_MAX} "
                             f"characters with a string value of at most {NAME_MAX}")
    return backup_uuid, size, validate_container(record.get("container"))


def _already_exists() -> errors.InvalidBackup:
    return errors.InvalidBackup("Invalid backup: Backup already exists in database.")


def import_record(session: Session, ctx: RequestContext, settings: Settings, *,
                  backup_service: str, backup_url: str, now: dt.datetime
                  ) -> tuple[Backup, list[Job]]:
    """Recreate a backup row from an exported record and verify it against the store (admin).

    :raises PolicyNotAuthorized, InvalidBackup, InvalidInput, OverQuota, NoLiveHost:
    """
    policy.authorize(ctx, "backup:backup-import")
    if backup_service != DRIVER_ID:
        raise errors.InvalidBackup(f"Invalid backup: backup_service {backup_service!r} is not "
                                   f"supported; this service imports {DRIVER_ID} records.")
    try:
        record = json.loads(base64.b64decode(backup_url.encode(), validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise errors.InvalidInput("Invalid input received: Can't parse backup record.") from None
    if not isinstance(record, dict):
        raise errors.InvalidInput("Invalid input received: Can't parse backup record.")
    if "id" not in record:
        raise errors.InvalidInput("Invalid input received: Provided backup record is missing "
                                  "an id.")
    if "size" not in record:
        raise errors.InvalidInput("Invalid input received: Provided backup record is missing "
                                  "size attribute.")
    try:
        backup_uuid, size, container = _check_record(record)
    except (TypeError, ValueError, OverflowError, errors.InvalidInput) as exc:
        raise errors.InvalidInput(f"Invalid input received: Can't parse backup record "
                                  f"({exc}).") from None
    if record.get("encryption_key_id"):
        try:
            keys.check_carried(keys.kek_provider(settings), record)
        except keys.KeyError_ as exc:
            raise errors.InvalidInput(f"Invalid input received: the record's encryption keys "
                                      f"cannot be used here ({exc}).") from None
    parent_id = record.get("parent_id")
    if parent_id is not None and session.scalar(select(Backup.id).where(
            Backup.id == parent_id, Backup.project_id == ctx.project_id,
            Backup.deleted.is_(False))) is None:
        raise errors.InvalidInput(f"Invalid input received: the record's parent backup "
                                  f"{parent_id} is not a backup of project {ctx.project_id}.")
    # Locked (PostgreSQL): two imports of one deleted record revive it once; the second
    # waits, then finds it live.
    existing = session.scalar(select(Backup).where(Backup.id == backup_uuid)
                              .with_for_update().execution_options(populate_existing=True))
    if existing is not None and not existing.deleted:
        raise _already_exists()
    try:  # after validation: a malformed record is a 400 even with no worker alive
        host = hosts.select_host(session, hosts.BACKUP_BINARY, now=now,
                                 down_time=settings.service_down_time)
    except errors.NoLiveHost:
        raise errors.ServiceUnavailable(f"Service {backup_service} could not be found.") from None
    quota.charge(session, ctx.project_id, {"backups": 1, "backup_gigabytes": size}, settings,
                 now=now)
    revived = existing is not None
    backup = existing or Backup(id=backup_uuid, created_at=now)
    backup.user_id, backup.project_id = ctx.user_id, ctx.project_id
    backup.volume_id = NULL_VOLUME_ID
    backup.status = BackupStatus.CREATING
    backup.deleted, backup.deleted_at = False, None
    backup.size = size
    backup.container = container
    backup.host = host
    backup.fail_reason = None
    backup.object_count = 0
    backup.num_dependent_backups = 0
    # Nothing of the deleted record's driver fields survives: until the import completes
    # the row names no objects, so deleting a failed import deletes none of them.
    backup.service = backup.service_metadata = None
    backup.parent_id = backup.snapshot_id = backup.restore_volume_id = None
    backup.stored_bytes = None
    backup.verify_status = backup.verify_message = backup.verified_at = None
    backup.policy_id = backup.kept_by = None  # an import is nobody's scheduled backup
    if revived:
        for item in backup.metadata_items:
            item.deleted, item.deleted_at = True, now
    else:
        session.add(backup)
    try:
        with session.begin_nested():  # a concurrent import of the same new id
            session.flush()
    except IntegrityError:
        raise _already_exists() from None
    job = jobs.create(session, "backup_import", resource_id=backup.id, host=host,
                      project_id=ctx.project_id,
                      params=BackupImportParams(record=record, revived=revived), now=now)
    return backup, [job]
