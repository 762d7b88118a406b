"""The control halves of the volume and snapshot job types (the file volume backend)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from dataclasses import field

from sqlalchemy import update
from sqlalchemy.orm import Session

from orchestrator import quota
from orchestrator.models import Snapshot
from orchestrator.models import Volume
from orchestrator.operations.base import Operation
from orchestrator.operations.base import Params
from orchestrator.operations.base import register
from orchestrator.persistence.resources import set_status
from orchestrator.states import SnapshotStatus
from orchestrator.states import VolumeStatus


def purge_volume(session: Session, volume_id: str, now: dt.datetime) -> None:
    """Soft-delete a volume row and give its quota back, once."""
    vol = session.get(Volume, volume_id)
    if vol is None or vol.deleted:
        return
    if session.execute(update(Volume).where(Volume.id == volume_id, Volume.deleted.is_(False))
                       .values(deleted=True, deleted_at=now,
                               status=VolumeStatus.DELETED)).rowcount:
        quota.release(session, vol.project_id, {"volumes": 1, "gigabytes": vol.size}, now=now)


def purge_snapshot(session: Session, snapshot_id: str, now: dt.datetime) -> None:
    """Soft-delete a snapshot row and give its quota back, once."""
    snap = session.get(Snapshot, snapshot_id)
    if snap is None or snap.deleted:
        return
    if session.execute(update(Snapshot).where(Snapshot.id == snapshot_id,
                                              Snapshot.deleted.is_(False))
                       .values(deleted=True, deleted_at=now,
                               status=SnapshotStatus.DELETED)).rowcount:
        quota.release(session, snap.project_id, {"snapshots": 1, "gigabytes": snap.size},
                      now=now)


@dataclass(frozen=True)
class VolumeCreateParams(Params):
    size: int
    # The status the new volume takes: restoring-backup when a restore is chained after it.
    then_status: str = VolumeStatus.AVAILABLE


@register
class VolumeCreate(Operation):
    name = "volume_create"
    params_type = VolumeCreateParams
    resource_type = "volume"
    queue_kind = "volume"
    resumable = True

    def complete(self, session, job, params: VolumeCreateParams, outcome, *, now):
        session.execute(update(Volume).where(Volume.id == job.resource_id,
                                             Volume.status == VolumeStatus.CREATING)
                        .values(status=params.then_status, launched_at=now, updated_at=now))

    def fail(self, session, job, params, reason, *, now, cancelled):
        set_status(session, Volume, job.resource_id, VolumeStatus.CREATING, VolumeStatus.ERROR,
                   now=now)

    def abandon(self, session, job, params, *, now):
        vol = session.get(Volume, job.resource_id)
        if vol is not None:
            quota.release(session, vol.project_id, {"volumes": 1, "gigabytes": vol.size},
                          now=now)
            session.delete(vol)


@dataclass(frozen=True)
class VolumeDeleteParams(Params):
    previous_status: str = VolumeStatus.AVAILABLE
    snapshot_ids: list[str] = field(default_factory=list)


@register
class VolumeDelete(Operation):
    name = "volume_delete"
    params_type = VolumeDeleteParams
    resource_type = "volume"
    queue_kind = "volume"
    resumable = True

    def complete(self, session, job, params: VolumeDeleteParams, outcome, *, now):
        for snapshot_id in params.snapshot_ids:
            purge_snapshot(session, snapshot_id, now)
        purge_volume(session, job.resource_id, now)

    def fail(self, session, job, params, reason, *, now, cancelled):
        set_status(session, Volume, job.resource_id, VolumeStatus.DELETING,
                   VolumeStatus.ERROR_DELETING, now=now)

    def abandon(self, session, job, params: VolumeDeleteParams, *, now):
        set_status(session, Volume, job.resource_id, VolumeStatus.DELETING,
                   params.previous_status, now=now)


@dataclass(frozen=True)
class SnapshotParams(Params):
    volume_id: str


@register
class SnapshotCreate(Operation):
    name = "snapshot_create"
    params_type = SnapshotParams
    resource_type = "snapshot"
    queue_kind = "volume"

    def complete(self, session, job, params, outcome, *, now):
        session.execute(update(Snapshot).where(Snapshot.id == job.resource_id,
                                               Snapshot.status == SnapshotStatus.CREATING)
                        .values(status=SnapshotStatus.AVAILABLE, progress="100%",
                                updated_at=now))

    def fail(self, session, job, params, reason, *, now, cancelled):
        set_status(session, Snapshot, job.resource_id, SnapshotStatus.CREATING,
                   SnapshotStatus.ERROR, now=now)

    def abandon(self, session, job, params, *, now):
        snap = session.get(Snapshot, job.resource_id)
        if snap is not None:
            quota.release(session, snap.project_id, {"snapshots": 1, "gigabytes": snap.size},
                          now=now)
            session.delete(snap)


@register
class SnapshotDelete(Operation):
    name = "snapshot_delete"
    params_type = SnapshotParams
    resource_type = "snapshot"
    queue_kind = "volume"
    resumable = True

    def complete(self, session, job, params, outcome, *, now):
        purge_snapshot(session, job.resource_id, now)

    def fail(self, session, job, params, reason, *, now, cancelled):
        set_status(session, Snapshot, job.resource_id, SnapshotStatus.DELETING,
                   SnapshotStatus.ERROR_DELETING, now=now)

    def abandon(self, session, job, params, *, now):
        set_status(session, Snapshot, job.resource_id, SnapshotStatus.DELETING,
                   SnapshotStatus.AVAILABLE, now=now)
