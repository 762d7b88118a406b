"""Volume and snapshot records and their state rules.

The data lives on a storage node (``volume.<host>``); these functions only
change rows and return the jobs that the caller dispatches after commit.
"""
from __future__ import annotations

import datetime as dt
import functools

from sqlalchemy import bindparam
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session

from orchestrator import errors
from orchestrator import hosts
from orchestrator import jobs
from orchestrator import paging
from orchestrator import policy
from orchestrator import quota
from orchestrator.config import Settings
from orchestrator.context import RequestContext
from orchestrator.models import Backup
from orchestrator.models import Job
from orchestrator.models import Snapshot
from orchestrator.models import Volume
from orchestrator.models import new_id
from orchestrator.operations.volumes import SnapshotParams
from orchestrator.operations.volumes import VolumeCreateParams
from orchestrator.operations.volumes import VolumeDeleteParams
from orchestrator.states import SnapshotStatus
from orchestrator.states import VolumeStatus

VOLUME_DELETABLE = ("available", "error", "error_restoring", "error_extending")


def _visible(row, ctx: RequestContext) -> bool:
    """A volume or snapshot (ORM object or row) exists, is not deleted, and ctx may see it."""
    return row is not None and not row.deleted and \
        (ctx.is_admin or row.project_id == ctx.project_id)


def get_volume(session: Session, ctx: RequestContext, volume_id: str) -> Volume:
    """A visible volume. :raises VolumeNotFound:"""
    vol = session.get(Volume, volume_id)
    if not _visible(vol, ctx):
        raise errors.VolumeNotFound(volume_id)
    return vol


@functools.cache
def _volume_row_statement():
    table = Volume.__table__
    return select(table).where(table.c.id == bindparam("id"))


def volume_row(session, ctx: RequestContext, volume_id: str):
    """A visible volume as a plain row, for paths that only read it (cheaper than an ORM
    object). :raises VolumeNotFound:"""
    row = session.execute(_volume_row_statement(), {"id": volume_id}).first()
    if not _visible(row, ctx):
        raise errors.VolumeNotFound(volume_id)
    return row


def get_snapshot(session: Session, ctx: RequestContext, snapshot_id: str) -> Snapshot:
    """A visible snapshot. :raises SnapshotNotFound:"""
    snap = session.get(Snapshot, snapshot_id)
    if not _visible(snap, ctx):
        raise errors.SnapshotNotFound(snapshot_id)
    return snap


def new_volume(session: Session, ctx: RequestContext, settings: Settings, *, size: int,
               name: str | None, description: str | None, availability_zone: str | None,
               metadata: dict | None, volume_type: str | None, now: dt.datetime,
               status: str = "creating", job_state: str = "queued",
               then_status: str = VolumeStatus.AVAILABLE) -> tuple[Volume, Job]:
    """Charge quota, place the volume on a live volume host and queue its creation.

    :raises NoLiveHost, OverQuota:
    """
    if availability_zone:
        hosts.check_zone(session, availability_zone)
    az = availability_zone or settings.default_availability_zone
    host = hosts.select_host(session, hosts.VOLUME_BINARY, now=now,
                             down_time=settings.service_down_time, az=az)
    quota.charge(session, ctx.project_id, {"volumes": 1, "gigabytes": size}, settings, now=now)
    vol = Volume(id=new_id(), project_id=ctx.project_id, user_id=ctx.user_id, host=host,
                 availability_zone=az, size=size, status=status, display_name=name,
                 display_description=description, volume_type=volume_type or "__DEFAULT__",
                 metadata_=dict(metadata or {}), created_at=now)
    session.add(vol)
    session.flush()
    job = jobs.create(session, "volume_create", resource_id=vol.id, host=host,
                      project_id=ctx.project_id, state=job_state, now=now,
                      params=VolumeCreateParams(size=size, then_status=then_status))
    return vol, job


def delete_volume(session: Session, ctx: RequestContext, settings: Settings, volume_id: str, *,
                  force: bool = False, cascade: bool = False, now: dt.datetime) -> Job:
    """Queue the deletion of a volume.

    :raises VolumeNotFound, InvalidVolume, PolicyNotAuthorized:
    """
    vol = get_volume(session, ctx, volume_id)
    if force:
        policy.authorize(ctx, "volume_extension:volume_admin_actions:force_delete")
    if not force and vol.status not in VOLUME_DELETABLE:
        raise errors.InvalidVolume(
            f"Invalid volume: Volume {vol.id} status must be available or error or "
            f"error_restoring or error_extending or error_managing and must not be migrating, "
            f"attached, belong to a group, have snapshots, awaiting a transfer, or be disassociated"
            f" from snapshots after volume transfer, but current status is: {vol.status}.")
    snaps = session.scalars(select(Snapshot).where(Snapshot.volume_id == vol.id,
                                                   Snapshot.deleted.is_(False))).all()
    if snaps and not cascade:
        raise errors.InvalidVolume(f"Invalid volume: Volume {vol.id} still has "
                                   f"{len(snaps)} dependent snapshots.")
    busy = [snap for snap in snaps
            if snap.status not in (SnapshotStatus.AVAILABLE, SnapshotStatus.ERROR)]
    if busy and not force:
        raise errors.InvalidVolume(
            f"Invalid volume: Snapshot {busy[0].id} of volume {vol.id} is {busy[0].status}; "
            "the volume can be deleted with its snapshots once that ends.")
    previous = vol.status  # read before the CAS: the ORM syncs the object after it
    allowed = None if force else VOLUME_DELETABLE
    cond = [Volume.id == vol.id, Volume.deleted.is_(False), Volume.status != "deleting"]
    if allowed:
        cond.append(Volume.status.in_(allowed))
    if session.execute(update(Volume).where(*cond).values(
            status="deleting", previous_status=previous, updated_at=now)).rowcount != 1:
        raise errors.InvalidVolume(f"Invalid volume: Volume {vol.id} changed status"
                                   " while it was being deleted; try again.")
    return jobs.create(session, "volume_delete", resource_id=vol.id, host=vol.host,
                       project_id=vol.project_id, now=now,
                       params=VolumeDeleteParams(previous_status=previous,
                                                 snapshot_ids=[s.id for s in snaps]))


def new_snapshot(session: Session, ctx: RequestContext, settings: Settings, *, volume_id: str,
                 name: str | None, description: str | None, force: bool,
                 metadata: dict | None, now: dt.datetime, allow_in_use: bool = False
                 ) -> tuple[Snapshot, Job]:
    """Queue a snapshot of a volume on the volume's host.

    :raises VolumeNotFound, InvalidVolume, OverQuota:
    """
    vol = get_volume(session, ctx, volume_id)
    ok = ("available", "in-use") if (force or allow_in_use) else ("available",)
    if vol.status not in ok:
        raise errors.InvalidVolume(f"Invalid volume: Volume {vol.id} status must be available,"
                                   f" but current status is: {vol.status}.")
    quota.charge(session, ctx.project_id, {"snapshots": 1, "gigabytes": vol.size}, settings,
                 now=now)
    snap = Snapshot(id=new_id(), project_id=ctx.project_id, user_id=ctx.user_id,
                    volume_id=vol.id, status="creating", size=vol.size, display_name=name,
                    display_description=description, metadata_=dict(metadata or {}),
                    created_at=now)
    session.add(snap)
    session.flush()
    job = jobs.create(session, "snapshot_create", resource_id=snap.id, host=vol.host,
                      project_id=ctx.project_id, params=SnapshotParams(volume_id=vol.id),
                      now=now)
    return snap, job


def delete_snapshot(session: Session, ctx: RequestContext, snapshot_id: str, *,
                    now: dt.datetime) -> Job:
    """Queue the deletion of a snapshot. :raises SnapshotNotFound, InvalidSnapshot:"""
    snap = get_snapshot(session, ctx, snapshot_id)
    if session.scalar(select(Backup.id).where(Backup.snapshot_id == snap.id,
                                              Backup.deleted.is_(False),
                                              Backup.status == "creating")):
        raise errors.InvalidSnapshot(f"Invalid snapshot: Snapshot {snap.id} is being backed up.")
    if session.execute(update(Snapshot).where(
            Snapshot.id == snap.id, Snapshot.status.in_(("available", "error")))
            .values(status="deleting", updated_at=now)).rowcount != 1:
        raise errors.InvalidSnapshot(f"Invalid snapshot: Snapshot {snap.id} status must be "
                                     f"available or error, but current status is: {snap.status}.")
    vol = session.get(Volume, snap.volume_id)
    return jobs.create(session, "snapshot_delete", resource_id=snap.id,
                       host=vol.host if vol else "", project_id=snap.project_id,
                       params=SnapshotParams(volume_id=snap.volume_id), now=now)


VOLUME_SORT_KEYS = {"id", "status", "size", "availability_zone", "created_at", "updated_at",
                    "display_name", "display_description", "volume_type", "bootable",
                    "project_id", "user_id", "host"}
SNAPSHOT_SORT_KEYS = {"id", "status", "size", "created_at", "updated_at", "display_name",
                      "display_description", "volume_id", "project_id", "user_id"}


def list_volumes(session: Session, ctx: RequestContext, *, all_tenants: bool = False, **kw):
    scope = None if (ctx.is_admin and all_tenants) else ctx.project_id
    return paging.list_rows(session, Volume, scope_project=scope, sort_keys=VOLUME_SORT_KEYS, **kw)


def list_snapshots(session: Session, ctx: RequestContext, *, all_tenants: bool = False, **kw):
    scope = None if (ctx.is_admin and all_tenants) else ctx.project_id
    return paging.list_rows(session, Snapshot, scope_project=scope,
                            sort_keys=SNAPSHOT_SORT_KEYS, **kw)
