"""Runs jobs on a storage node: claim, lease, data path, terminal state.

Every job goes through ``run_job``: it claims the job row (a duplicate
delivery finds it taken and returns), keeps the lease alive from a side
thread while the work runs, and ends the job in exactly one transaction that
also moves the resources to their final state. Any exception ends in the
same failure handling the reaper applies to a dead worker's jobs.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import aliased
from sqlalchemy.orm.attributes import set_committed_value

from orchestrator import jobs
from orchestrator import quota
from orchestrator.config import Settings
from orchestrator.db import Database
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.models import Backup
from orchestrator.models import BackupMetadata
from orchestrator.models import Job
from orchestrator.models import Service
from orchestrator.models import Snapshot
from orchestrator.models import Volume
from workers.volumes import FileVolumeBackend

log = logging.getLogger(__name__)

BACKUPS = Backup.__table__

GiB = 1024 ** 3
PROGRESS_EVERY_S = 1.0
# How often the data path's cancellation check reads the job row (the lease thread
# also reads it at each renewal, and what it finds counts at once).
CANCEL_POLL_S = 1.0


class JobCancelled(Exception):
    """The job was asked to stop (force delete, reset) or lost its lease."""


class Lease(threading.Thread):
    """Renews a job's lease until stopped; notices cancellation and loss."""

    def __init__(self, db: Database, job_id: str, owner: str, ttl: float):
        super().__init__(name=f"lease-{job_id[:8]}", daemon=True)
        self.db, self.job_id, self.owner, self.ttl = db, job_id, owner, ttl
        self.interval = max(0.5, min(ttl / 4, 10.0))
        self._halt = threading.Event()
        self.lost = False
        self.cancel_requested = False

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.renew()

    def renew(self) -> None:
        try:
            with self.db.scope() as session:
                ours, cancel = jobs.renew(session, self.job_id, self.owner, now=utcnow(),
                                          ttl=self.ttl)
            self.lost = self.lost or not ours
            self.cancel_requested = self.cancel_requested or cancel
        except Exception:  # a DB hiccup must not kill the lease thread
            log.exception("lease renewal of job %s failed; will retry", self.job_id)

    def stop(self) -> None:
        self._halt.set()


@dataclass
class JobRun:
    settings: Settings
    db: Database
    job: Job
    owner: str
    lease: Lease
    # What PREPARE[job.op] returned in the claim's transaction (None without one).
    prepared: Any = None
    _next_poll: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        # The claim has just seen cancel_requested false: the first read can wait.
        self._next_poll = time.monotonic() + CANCEL_POLL_S

    def cancelled(self) -> bool:
        """Checked by the data path at least every 64 MiB.

        A lost lease or a cancellation the lease thread saw counts at once; the job
        row itself is read at most once per CANCEL_POLL_S.
        """
        if self.lease.lost or self.lease.cancel_requested:
            return True
        now = time.monotonic()
        if now < self._next_poll:
            return False
        self._next_poll = now + CANCEL_POLL_S
        with self.db.scope(write=False) as session:
            cancel = session.scalar(select(Job.cancel_requested).where(Job.id == self.job.id))
        if cancel:
            self.lease.cancel_requested = True
        return self.lease.cancel_requested

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled("cancelled")


# Drivers and volume backends hold no per-job state: one per configuration and process
# (an S3 store builds a boto3 client). Forgotten in a forked child, like the engines.
_drivers: dict = {}
_volume_backends: dict = {}


def _forget_cached() -> None:
    _drivers.clear()
    _volume_backends.clear()


os.register_at_fork(after_in_child=_forget_cached)


def volume_backend(settings: Settings) -> FileVolumeBackend:
    vb = _volume_backends.get(settings.volume_path)
    if vb is None:
        vb = _volume_backends[settings.volume_path] = FileVolumeBackend(settings.volume_path)
    return vb


def _store_args(settings: Settings) -> tuple[str, dict]:
    """The configured store: its kind and make_store's arguments."""
    if settings.backup_store == "s3":
        return "s3", dict(endpoint_url=settings.s3_endpoint_url or None,
                          bucket=settings.s3_bucket, access_key=settings.s3_access_key,
                          secret_key=settings.s3_secret_key, region=settings.s3_region)
    return "posix", dict(path=settings.backup_path)


def backup_driver(settings: Settings):
    """The chunked driver on the configured store (one per configuration and process)."""
    from workers.drivers import ChunkedDriver
    from workers.drivers import make_store
    kind, args = _store_args(settings)
    key = (kind, tuple(sorted(args.items())), settings.backup_compression)
    driver = _drivers.get(key)
    if driver is None:
        driver = _drivers[key] = ChunkedDriver(make_store(kind, **args),
                                               compression=settings.backup_compression)
    return driver


def run_job(settings: Settings, job_id: str, *, owner: str) -> str:
    """Execute one job to a terminal state; returns that state (or 'skipped')."""
    db = get_database(settings.database_url)
    prepared = None
    with db.scope() as session:
        job = jobs.claim(session, job_id, owner, now=utcnow(), ttl=settings.lease_ttl)
        if job is not None and job.op in PREPARE:
            # In the claim's transaction: one commit fewer, and what it reads the handler
            # does not read again.
            prepared = PREPARE[job.op](session, job)
    if job is None:
        log.info("job %s is not queued (duplicate delivery, cancelled or done): skipped", job_id)
        return "skipped"
    lease = Lease(db, job.id, owner, settings.lease_ttl)
    lease.start()
    run = JobRun(settings, db, job, owner, lease, prepared)
    handler = HANDLERS[job.op]
    log.info("job %s %s on %s: started (attempt %d)", job.id, job.op, job.resource_id,
             job.attempt)
    try:
        follow_ups = handler(run)
        state = "succeeded"
    except Exception as exc:
        from workers.drivers import BackupCancelled
        cancelled = isinstance(exc, (JobCancelled, BackupCancelled))
        state = "cancelled" if cancelled else "failed"
        reason = _reason(job, exc, cancelled)
        if not cancelled:
            from workers.drivers.errors import DataPathError
            if isinstance(exc, DataPathError):  # a failure the data path names: its reason says it
                log.error("job %s %s failed: %s", job.id, job.op, reason)
            else:  # anything else may be a bug: keep the traceback
                log.exception("job %s %s failed", job.id, job.op)
        with db.scope() as session:
            follow_ups = []
            # finish refreshes job.next_job_id: a force delete may have chained a job
            # after this one meanwhile.
            if jobs.finish(session, job, state, now=utcnow(), error=reason, owner=owner):
                follow_ups = jobs.on_failure(session, job, reason, now=utcnow(),
                                             cancelled=cancelled)
    finally:
        lease.stop()
    if follow_ups:
        from orchestrator.dispatch import Publisher
        from orchestrator.dispatch import dispatch
        dispatch(db, Publisher(_celery(settings)), follow_ups, undo_on_failure=False)
    log.info("job %s %s: %s", job.id, job.op, state)
    return state


_celery_apps: dict = {}


def _celery(settings: Settings):
    from orchestrator.tasks import make_celery
    app = _celery_apps.get(settings.broker_url)
    if app is None:
        app = _celery_apps[settings.broker_url] = make_celery(settings)
    return app


def _reason(job: Job, exc: Exception, cancelled: bool) -> str:
    if cancelled:
        return f"{job.op.replace('_', ' ')} was cancelled"
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"


def _complete(run: JobRun, effects) -> list[Job]:
    """Finish the job as succeeded and apply ``effects(session, now)`` atomically."""
    with run.db.scope() as session:
        now = utcnow()
        if not jobs.finish(session, run.job, "succeeded", now=now, owner=run.owner):
            log.warning("job %s lost its lease before completing; its result is dropped",
                        run.job.id)
            return []
        effects(session, now)
        # finish refreshed run.job.next_job_id: a force delete may have chained a job
        # after this one meanwhile.
        nxt = jobs.promote_next(session, run.job, now=now)
        return [nxt] if nxt else []


class _ProgressRecorder:
    """Writes the data path's progress to the backup row, at most once per PROGRESS_EVERY_S
    and always at done == total.

    With ``write_first=False`` the first report (0 bytes, at the start) is not written, and
    with ``write_last=False`` neither is the one at done == total: for a caller that has
    already written the start (prepare_backup_create) and writes the end itself on
    completion (``final_rate`` is the rate that report carried).
    """

    def __init__(self, run: JobRun, backup_id: str, *, write_first: bool = True,
                 write_last: bool = True):
        self.db, self.backup_id, self.write_last = run.db, backup_id, write_last
        self.start = time.monotonic()
        self.last = 0.0 if write_first else self.start
        self.final_rate: float | None = None

    def __call__(self, done: int, total: int) -> None:
        t = time.monotonic()
        if t - self.last < PROGRESS_EVERY_S and done < total:
            return
        rate = done / max(t - self.start, 1e-6)
        if done >= total:
            self.final_rate = rate
            if not self.write_last:
                return
        self.last = t
        with self.db.scope() as session:
            session.execute(update(Backup).where(Backup.id == self.backup_id).values(
                progress_bytes=done, progress_total=total, progress_rate=rate))


# ----------------------------------------------------------------------------- handlers


def backup_create(run: JobRun) -> list[Job]:
    from workers.drivers import BackupRef
    p = run.job.params
    # Read (and the object location recorded) by prepare_backup_create at the claim.
    backup, parent, volume = run.prepared
    if backup is None or backup.status != "creating":
        raise RuntimeError(f"backup {run.job.resource_id} is "
                           f"{backup.status if backup else 'gone'}, not creating")
    vb = volume_backend(run.settings)
    source = vb.snapshot_path(p["snapshot_id"]) if p.get("snapshot_id") else \
        vb.volume_path(p["volume_id"])
    parent_ref = BackupRef(parent.container, parent.service_metadata) if parent else None
    driver = backup_driver(run.settings)
    volume_meta = {"display_name": volume.display_name if volume else None,
                   "display_description": volume.display_description if volume else None,
                   "metadata": volume.metadata_ if volume else {},
                   "bootable": volume.bootable if volume else False}
    # prepare_backup_create wrote the start (0 of the size); the completion writes the end.
    progress = _ProgressRecorder(run, backup.id, write_first=False, write_last=False)
    result = driver.backup(source, backup_id=backup.id, volume_id=backup.volume_id,
                           size_bytes=(backup.size or 0) * GiB, container=backup.container,
                           parent=parent_ref, volume_meta=volume_meta,
                           progress=progress, cancelled=run.cancelled)

    def effects(session, now):
        is_incremental = bool(result.incremental and parent)
        values = dict(status="available", container=result.container,
                      service_metadata=result.prefix, service=driver.DRIVER_ID,
                      object_count=result.object_count, stored_bytes=result.stored_bytes,
                      progress_bytes=result.logical_bytes, progress_total=result.logical_bytes,
                      updated_at=now)
        if progress.final_rate is not None:
            values["progress_rate"] = progress.final_rate
        if not is_incremental:
            values["parent_id"] = None
        if result.message:
            values["fail_reason"] = jobs.truncate_reason(result.message)
        # Core, not ORM: nothing in this session to keep in step with the row.
        done = session.execute(update(BACKUPS).where(BACKUPS.c.id == backup.id,
                                                     BACKUPS.c.status == "creating")
                               .values(**values)).rowcount
        if parent is not None:
            count_dependents(session, parent.id)
        if not done:
            log.warning("backup %s changed status while it ran; result not applied", backup.id)
        jobs._restore_source(session, run.job, now)
    return _complete(run, effects)


# The backup, its volume (and its parent): one statement, built once.
_BACKUP_VOLUME = (select(Backup, Volume).select_from(Backup)
                  .outerjoin(Volume, Volume.id == bindparam("volume_id"))
                  .where(Backup.id == bindparam("backup_id")))
_PARENT = aliased(Backup, name="parent")
_BACKUP_PARENT_VOLUME = (_BACKUP_VOLUME.add_columns(_PARENT)
                         .outerjoin(_PARENT, _PARENT.id == bindparam("parent_id")))


def prepare_backup_create(session, job: Job
                          ) -> tuple[Backup | None, Backup | None, Volume | None]:
    """Record where the objects will go before any is written, so that whatever happens
    to this worker, deleting the backup later finds and removes them.

    Returns (backup, parent, volume) for the handler, read in one statement.
    """
    from workers.drivers import ChunkedDriver
    p = job.params
    parent_id = p.get("parent_id")
    row = session.execute(
        _BACKUP_PARENT_VOLUME if parent_id else _BACKUP_VOLUME,
        {"backup_id": job.resource_id, "volume_id": p["volume_id"], "parent_id": parent_id}
    ).first()
    if row is None:
        return None, None, None  # the handler reports it
    backup, volume = row[0], row[1]
    inputs = (backup, row[2] if parent_id else None, volume)
    if backup.status != "creating":
        return inputs  # the handler reports it
    ref = ChunkedDriver.ref_for(backup.id, backup.container)
    values = dict(container=ref.container, service_metadata=ref.prefix,
                  service=ChunkedDriver.DRIVER_ID, progress_bytes=0,
                  progress_total=(backup.size or 0) * GiB)
    # Core (cheaper than an ORM UPDATE), and ``backup`` kept in step by hand.
    session.execute(update(BACKUPS).where(BACKUPS.c.id == backup.id).values(**values))
    for key, value in values.items():
        set_committed_value(backup, key, value)
    return inputs


def count_dependents(session, parent_id: str) -> None:
    """num_dependent_backups derived from the live children (Cinder's counter drifts: W12)."""
    from sqlalchemy import func
    children = select(func.count()).select_from(Backup).where(
        Backup.parent_id == parent_id, Backup.deleted.is_(False)).scalar_subquery()
    session.execute(update(Backup).where(Backup.id == parent_id)
                    .values(num_dependent_backups=children))


def backup_restore(run: JobRun) -> list[Job]:
    from workers.drivers import BackupRef
    p = run.job.params
    with run.db.scope(write=False) as session:
        backup = session.get(Backup, run.job.resource_id)
        volume = session.get(Volume, p["volume_id"])
    if backup is None or backup.status != "restoring":
        raise RuntimeError(f"backup {run.job.resource_id} is not restoring")
    if volume is None or volume.status not in ("restoring-backup", "creating"):
        raise RuntimeError(f"volume {p['volume_id']} is not restoring-backup")
    vb = volume_backend(run.settings)
    target = vb.volume_path(volume.id)
    if p.get("volume_is_new"):
        vb.create_volume(volume.id, volume.size)  # idempotent: normally made by volume_create
    driver = backup_driver(run.settings)
    driver.restore(BackupRef(backup.container, backup.service_metadata), target,
                   target_is_zeroed=bool(p.get("volume_is_new")),
                   progress=_ProgressRecorder(run, backup.id), cancelled=run.cancelled)

    def effects(session, now):
        session.execute(update(Backup).where(Backup.id == backup.id, Backup.status == "restoring")
                        .values(status="available", updated_at=now))
        vol = session.get(Volume, volume.id)
        meta = dict(vol.metadata_ or {})
        if backup.volume_id != vol.id or meta.get("src_backup_id") not in (None, backup.id):
            meta["src_backup_id"] = backup.id
        values = dict(status="available", metadata_=meta, updated_at=now)
        if p.get("volume_is_new"):
            values["launched_at"] = now
        session.execute(update(Volume).where(
            Volume.id == vol.id, Volume.status.in_(("restoring-backup", "creating")))
            .values(**values))
    return _complete(run, effects)


def backup_delete(run: JobRun) -> list[Job]:
    from workers.drivers import BackupRef
    with run.db.scope(write=False) as session:
        backup = session.get(Backup, run.job.resource_id)
    if backup is None or backup.status != "deleting":
        raise RuntimeError(f"backup {run.job.resource_id} is not deleting")
    if backup.service_metadata:
        backup_driver(run.settings).delete(BackupRef(backup.container, backup.service_metadata))

    def effects(session, now):
        b = session.get(Backup, backup.id)
        if session.execute(update(Backup).where(Backup.id == b.id, Backup.status == "deleting",
                                                Backup.deleted.is_(False))
                           .values(status="deleted", deleted=True, deleted_at=now)).rowcount != 1:
            return
        session.execute(update(BackupMetadata).where(BackupMetadata.backup_id == b.id)
                        .values(deleted=True, deleted_at=now))
        quota.release(session, b.project_id, {"backups": 1, "backup_gigabytes": b.size or 0},
                      now=now)
        if b.parent_id:
            count_dependents(session, b.parent_id)
    return _complete(run, effects)


def backup_import(run: JobRun) -> list[Job]:
    from workers.drivers import BackupRef
    record = run.job.params["record"]
    prefix = record.get("service_metadata")
    if not prefix:
        raise ValueError("the record has no service_metadata (object prefix)")
    driver = backup_driver(run.settings)
    manifest = driver.read_manifest(BackupRef(record.get("container"), prefix))
    if manifest.get("backup_id") not in (None, record["id"]):
        raise ValueError(f"the manifest in the store belongs to backup "
                         f"{manifest.get('backup_id')}, not {record['id']}")
    from orchestrator.api import _parse_time

    def effects(session, now):
        b = session.get(Backup, run.job.resource_id)
        if b.status != "creating":
            return
        zone = session.scalar(select(Service.availability_zone).where(
            Service.host == run.job.host, Service.binary == "cinder-backup"))
        b.volume_id = record.get("volume_id") or b.volume_id
        b.parent_id = record.get("parent_id")
        b.snapshot_id = record.get("snapshot_id")
        b.display_name = record.get("display_name")
        b.display_description = record.get("display_description")
        b.container = record.get("container")
        b.service_metadata = prefix
        b.service = driver.DRIVER_ID
        b.object_count = int(record.get("object_count") or 0)
        b.data_timestamp = _parse_time(record.get("data_timestamp")) or now
        b.created_at = _parse_time(record.get("created_at")) or b.created_at
        b.availability_zone = zone or b.availability_zone
        b.host = run.job.host
        b.status = "available"
        b.updated_at = now
        for key, value in (record.get("metadata") or {}).items():
            session.add(BackupMetadata(backup_id=b.id, key=str(key), value=str(value),
                                       created_at=now))
    return _complete(run, effects)


def backup_verify(run: JobRun) -> list[Job]:
    from workers.drivers import BackupRef
    with run.db.scope(write=False) as session:
        backup = session.get(Backup, run.job.resource_id)
    if backup is None or backup.deleted or not backup.service_metadata:
        raise RuntimeError(f"backup {run.job.resource_id} has no data to verify")
    result = backup_driver(run.settings).verify(
        BackupRef(backup.container, backup.service_metadata),
        progress=_ProgressRecorder(run, backup.id), cancelled=run.cancelled)
    if result.ok:
        message = (f"verified {result.objects_checked} objects, {result.blocks_checked} blocks "
                   f"({result.stored_bytes_checked} stored bytes) of a chain of "
                   f"{len(result.chain)}")
    else:
        message = f"{len(result.problems)} problem(s): " + "; ".join(
            str(p) for p in result.problems[:5])

    def effects(session, now):
        session.execute(update(Backup).where(Backup.id == backup.id).values(
            verify_status="ok" if result.ok else "failed", verified_at=now,
            verify_message=jobs.truncate_reason(message)))
    return _complete(run, effects)


def volume_create(run: JobRun) -> list[Job]:
    vb = volume_backend(run.settings)
    vb.create_volume(run.job.resource_id, int(run.job.params["size"]))
    then = run.job.params.get("then_status", "available")

    def effects(session, now):
        session.execute(update(Volume).where(Volume.id == run.job.resource_id,
                                             Volume.status == "creating")
                        .values(status=then, launched_at=now, updated_at=now))
    return _complete(run, effects)


def volume_delete(run: JobRun) -> list[Job]:
    vb = volume_backend(run.settings)
    for snap_id in run.job.params.get("snapshot_ids", []):
        vb.delete_snapshot(snap_id)
    vb.delete_volume(run.job.resource_id)

    def effects(session, now):
        for snap_id in run.job.params.get("snapshot_ids", []):
            _purge_snapshot(session, snap_id, now)
        jobs._purge_volume(session, run.job.resource_id, now)
    return _complete(run, effects)


def _purge_snapshot(session, snapshot_id: str, now) -> None:
    snap = session.get(Snapshot, snapshot_id)
    if snap is None or snap.deleted:
        return
    if session.execute(update(Snapshot).where(Snapshot.id == snapshot_id,
                                              Snapshot.deleted.is_(False))
                       .values(deleted=True, deleted_at=now, status="deleted")).rowcount:
        quota.release(session, snap.project_id, {"snapshots": 1, "gigabytes": snap.size}, now=now)


def snapshot_create(run: JobRun) -> list[Job]:
    vb = volume_backend(run.settings)
    vb.create_snapshot(run.job.resource_id, run.job.params["volume_id"])

    def effects(session, now):
        session.execute(update(Snapshot).where(Snapshot.id == run.job.resource_id,
                                               Snapshot.status == "creating")
                        .values(status="available", progress="100%", updated_at=now))
    return _complete(run, effects)


def snapshot_delete(run: JobRun) -> list[Job]:
    volume_backend(run.settings).delete_snapshot(run.job.resource_id)

    def effects(session, now):
        _purge_snapshot(session, run.job.resource_id, now)
    return _complete(run, effects)


PREPARE = {"backup_create": prepare_backup_create}

HANDLERS = {
    "backup_create": backup_create,
    "backup_restore": backup_restore,
    "backup_delete": backup_delete,
    "backup_import": backup_import,
    "backup_verify": backup_verify,
    "volume_create": volume_create,
    "volume_delete": volume_delete,
    "snapshot_create": snapshot_create,
    "snapshot_delete": snapshot_delete,
}


def cleanup_after_restart(settings: Settings, owners: list[str]) -> int:
    """Fail the jobs a previous run of this worker left running (nothing runs them now)."""
    db = get_database(settings.database_url)
    count = 0
    follow_ups: list[Job] = []
    with db.scope() as session:
        now = utcnow()
        for owner in owners:
            for job in jobs.leased_by(session, owner):
                reason = f"the worker {owner} restarted while the {job.op.replace('_', ' ')} ran"
                if jobs.finish(session, job, "failed", now=now, error=reason):
                    follow_ups.extend(jobs.on_failure(session, job, reason, now=now))
                    count += 1
    if follow_ups:
        from orchestrator.dispatch import Publisher
        from orchestrator.dispatch import dispatch
        dispatch(db, Publisher(_celery(settings)), follow_ups, undo_on_failure=False)
    return count
