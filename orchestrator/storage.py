"""The rules of the store's garbage collection: when it runs, where, and what it may free.

Freeing a *known* object (one with a ``store_objects`` row) is decided by its
reference count alone (see ``persistence/objects.py``). An object *no row
knows* is garbage only when all of these hold, so that neither a running
backup nor a database restored from an older dump can lose data to a sweep:

* its name lies under the prefix of a backup SQL knows (an unknown prefix is
  reported, never touched);
* that backup is of the shared-block format or deleted (a chain-format
  backup's objects are never registered, and are all its own);
* no job is active on that backup;
* it is not the manifest of a backup that is not deleted;
* it is older than the start of the oldest backup or import job still active
  anywhere, less ``ORCH_GC_GRACE`` seconds.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator import errors
from orchestrator import hosts
from orchestrator import jobs
from orchestrator.config import Settings
from orchestrator.models import Backup
from orchestrator.models import BackupObject
from orchestrator.models import Job
from orchestrator.models import Service
from orchestrator.models import StoredObject
from orchestrator.operations.storage import SCOPES
from orchestrator.operations.storage import StoreGCParams
from orchestrator.operations.storage import gc_resource_id
from orchestrator.persistence import objects
from orchestrator.states import ACTIVE_JOB_STATES

# Jobs that write objects into a store.
WRITERS = ("backup_create", "backup_import")


@dataclass(frozen=True)
class PrefixVerdict:
    """What a sweep may do with the unknown objects under one backup's prefix."""

    collectable: bool
    manifest_collectable: bool
    reason: str


def active_gc(session: Session, resource_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.resource_id == resource_id,
                                            Job.op == "store_gc",
                                            Job.state.in_(ACTIVE_JOB_STATES)).limit(1))


def start_gc(session: Session, settings: Settings, *, now: dt.datetime, scope: str = "full",
             host: str | None = None, zone: str | None = None, store: str | None = None
             ) -> tuple[Job, bool]:
    """Queue a collection on ``host`` (else a live backup host of ``zone``); returns the
    job and whether it is new (an active collection of the same store is returned as is).

    :raises InvalidInput: for an unknown scope.
    :raises ServiceNotFound: when no live backup host qualifies.
    """
    if scope not in SCOPES:
        raise errors.InvalidInput(f"Invalid input received: scope must be one of "
                                  f"{', '.join(SCOPES)}.")
    if host is None:
        try:
            host = hosts.select_host(session, hosts.BACKUP_BINARY, now=now,
                                     down_time=settings.service_down_time, az=zone)
        except errors.NoLiveHost:
            raise errors.ServiceNotFound(hosts.BACKUP_BINARY) from None
    resource_id = gc_resource_id(store or f"host:{host}")
    running = active_gc(session, resource_id)
    if running is not None:
        return running, False
    job = jobs.create(session, "store_gc", resource_id=resource_id, host=host, project_id=None,
                      params=StoreGCParams(scope=scope, store=store), now=now)
    return job, True


def store_host(session: Session, settings: Settings, store: str, *, now: dt.datetime
               ) -> str | None:
    """A live backup host for collecting ``store``: the host of the newest backup that
    references it when alive, else another live host of its zone; None when none is."""
    newest = session.execute(
        select(Backup.host, Backup.availability_zone)
        .join(BackupObject, BackupObject.backup_id == Backup.id)
        .join(StoredObject, StoredObject.id == BackupObject.object_id)
        .where(StoredObject.store == store)
        .order_by(Backup.created_at.desc()).limit(1)).first()
    preferred, zone = newest if newest else (None, None)
    try:
        return hosts.select_host(session, hosts.BACKUP_BINARY, now=now,
                                 down_time=settings.service_down_time, az=zone,
                                 preferred=preferred, use_same_host=preferred is not None
                                 and _alive(session, settings, preferred, now))
    except errors.NoLiveHost:
        return None


def _alive(session: Session, settings: Settings, host: str, now: dt.datetime) -> bool:
    service = session.scalar(select(Service).where(Service.host == host,
                                                   Service.binary == hosts.BACKUP_BINARY))
    return service is not None and not service.disabled and hosts.is_up(
        service, now=now, down_time=settings.service_down_time)


def schedule(session: Session, settings: Settings, *, now: dt.datetime) -> list[Job]:
    """Beat's collection round: one full collection per known store, unless one is active
    or one finished less than ``gc_interval`` ago. Returns the jobs to dispatch."""
    queued = []
    interval = dt.timedelta(seconds=settings.gc_interval)
    for store in objects.stores(session):
        resource_id = gc_resource_id(store)
        last = session.scalar(select(func.max(Job.created_at)).where(
            Job.resource_id == resource_id, Job.op == "store_gc"))
        if last is not None and now - last < interval:
            continue
        host = store_host(session, settings, store, now=now)
        if host is None:
            continue
        job, new = start_gc(session, settings, now=now, host=host, store=store)
        if new:
            queued.append(job)
    return queued


def sweep_cutoff(session: Session, settings: Settings, *, now: dt.datetime) -> dt.datetime:
    """Unknown objects younger than this may belong to a job still writing."""
    oldest = session.scalar(select(func.min(func.coalesce(Job.started_at, Job.created_at)))
                            .where(Job.op.in_(WRITERS), Job.state.in_(ACTIVE_JOB_STATES)))
    start = min(oldest, now) if oldest is not None else now
    return start - dt.timedelta(seconds=settings.gc_grace)


def prefix_verdicts(session: Session, backup_ids: Iterable[str]) -> dict[str, PrefixVerdict]:
    """For each backup id whose prefix holds unknown objects: may a sweep free them?"""
    ids = sorted(set(backup_ids))
    verdicts: dict[str, PrefixVerdict] = {}
    rows: dict[str, tuple] = {}
    busy: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for row in session.execute(select(Backup.id, Backup.status, Backup.deleted,
                                          Backup.data_format).where(Backup.id.in_(chunk))):
            rows[row[0]] = row[1:]
        busy.update(session.scalars(select(Job.resource_id).where(
            Job.resource_id.in_(chunk), Job.state.in_(ACTIVE_JOB_STATES))))
    for backup_id in ids:
        row = rows.get(backup_id)
        if row is None:
            verdicts[backup_id] = PrefixVerdict(False, False, "no such backup in the database")
            continue
        status, deleted, data_format = row
        if backup_id in busy:
            verdicts[backup_id] = PrefixVerdict(False, False, "a job is active on the backup")
        elif deleted:
            verdicts[backup_id] = PrefixVerdict(True, True, "the backup is deleted")
        elif data_format == 2:
            verdicts[backup_id] = PrefixVerdict(True, False, f"the backup is {status}")
        else:
            verdicts[backup_id] = PrefixVerdict(False, False,
                                                "a chain-format backup owns its objects")
    return verdicts


def gc_runs(session: Session, *, limit: int = 50) -> list[Job]:
    """The latest collections, newest first."""
    return list(session.scalars(select(Job).where(Job.op == "store_gc")
                                .order_by(Job.created_at.desc()).limit(limit)))
