"""Quota engine: limits, usage, reservations, expiry and reconcile.

Every change of usage is a conditional ``UPDATE`` on the usage row inside the
caller's transaction, the same transaction that inserts or deletes the row
being counted, so usage cannot drift from the tables by a crash in between.
PostgreSQL serialises concurrent updates of one usage row with its row lock
(the losing ``UPDATE`` re-checks its ``WHERE`` against the winner's values);
SQLite serialises whole write transactions (``BEGIN IMMEDIATE``).
"""
from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator import errors
from orchestrator.config import Settings
from orchestrator.db import dialect_of
from orchestrator.models import Backup
from orchestrator.models import Quota
from orchestrator.models import QuotaClass
from orchestrator.models import QuotaUsage
from orchestrator.models import Reservation
from orchestrator.models import Snapshot
from orchestrator.models import Volume
from orchestrator.models import new_id
from orchestrator.persistence import quota as quota_rows
from orchestrator.persistence.quota import MAX_USAGE

log = logging.getLogger(__name__)

RESOURCES = ("backup_gigabytes", "backups", "gigabytes", "snapshots", "volumes")
# Keys shown by os-quota-sets that we do not enforce (Cinder shows them too).
DISPLAY_ONLY = {"per_volume_gigabytes": -1, "groups": 10,
                "volumes___DEFAULT__": -1, "gigabytes___DEFAULT__": -1,
                "snapshots___DEFAULT__": -1}


def default_limits(session: Session, settings: Settings) -> dict[str, int]:
    """Configured defaults, overridden by the `default` quota class rows."""
    limits = {
        "backups": settings.quota_backups,
        "backup_gigabytes": settings.quota_backup_gigabytes,
        "volumes": settings.quota_volumes,
        "gigabytes": settings.quota_gigabytes,
        "snapshots": settings.quota_snapshots,
    }
    for row in session.scalars(select(QuotaClass).where(QuotaClass.class_name == "default")):
        if row.resource in limits:
            limits[row.resource] = row.hard_limit
    return limits


def get_limits(session: Session, project_id: str, settings: Settings) -> dict[str, int]:
    """The effective limit of every resource for a project (one query)."""
    limits = {
        "backups": settings.quota_backups,
        "backup_gigabytes": settings.quota_backup_gigabytes,
        "volumes": settings.quota_volumes,
        "gigabytes": settings.quota_gigabytes,
        "snapshots": settings.quota_snapshots,
    }
    for resource, hard_limit in quota_rows.limit_rows(session, project_id):
        if resource in limits:
            limits[resource] = hard_limit
    return limits


def recount(session: Session, project_id: str, resource: str) -> int:
    """What the tables say the usage of one resource is."""
    if resource == "backups":
        q = select(func.count()).select_from(Backup).where(
            Backup.project_id == project_id, Backup.deleted.is_(False))
    elif resource == "backup_gigabytes":
        q = select(func.coalesce(func.sum(Backup.size), 0)).where(
            Backup.project_id == project_id, Backup.deleted.is_(False))
    elif resource == "volumes":
        q = select(func.count()).select_from(Volume).where(
            Volume.project_id == project_id, Volume.deleted.is_(False))
    elif resource == "gigabytes":
        vols = session.scalar(select(func.coalesce(func.sum(Volume.size), 0)).where(
            Volume.project_id == project_id, Volume.deleted.is_(False)))
        snaps = session.scalar(select(func.coalesce(func.sum(Snapshot.size), 0)).where(
            Snapshot.project_id == project_id, Snapshot.deleted.is_(False)))
        return int(vols) + int(snaps)
    elif resource == "snapshots":
        q = select(func.count()).select_from(Snapshot).where(
            Snapshot.project_id == project_id, Snapshot.deleted.is_(False))
    else:
        raise ValueError(f"unknown quota resource {resource}")
    return int(session.scalar(q) or 0)


def _usage_id(session: Session, project_id: str, resource: str, *, minus: int = 0) -> int:
    """The id of a project's usage row, created from a recount (less ``minus``) if missing."""
    usage_id = session.scalar(select(QuotaUsage.id).where(
        QuotaUsage.project_id == project_id, QuotaUsage.resource == resource))
    if usage_id is not None:
        return usage_id
    try:
        with session.begin_nested():
            session.execute(insert(QuotaUsage).values(
                project_id=project_id, resource=resource,
                in_use=max(0, recount(session, project_id, resource) - minus), reserved=0))
    except IntegrityError:
        pass  # a concurrent request created it; use theirs
    return session.scalar(select(QuotaUsage.id).where(
        QuotaUsage.project_id == project_id, QuotaUsage.resource == resource))


def _over_quota(resource: str, delta: int, limit: int, consumed: int) -> errors.OverQuota:
    if resource == "backup_gigabytes":
        return errors.OverQuota(
            "VolumeBackupSizeExceedsAvailableQuota: Requested backup exceeds allowed Backup "
            f"gigabytes quota. Requested {delta}G, quota is {limit}G and {consumed}G has been "
            "consumed.")
    if resource == "backups":
        return errors.OverQuota(
            f"BackupLimitExceeded: Maximum number of backups allowed ({limit}) exceeded")
    if resource == "gigabytes":
        return errors.OverQuota(
            "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed "
            f"gigabytes quota. Requested {delta}G, quota is {limit}G and {consumed}G has been "
            "consumed.")
    if resource == "volumes":
        return errors.OverQuota(
            f"VolumeLimitExceeded: Maximum number of volumes allowed ({limit}) exceeded for "
            "quota 'volumes'.")
    if resource == "snapshots":
        return errors.OverQuota(
            f"SnapshotLimitExceeded: Maximum number of snapshots allowed ({limit}) exceeded")
    return errors.OverQuota(f"UnexpectedOverQuota: Unexpected over quota on {resource}.")


def reserve(session: Session, project_id: str, deltas: dict[str, int], settings: Settings, *,
            now: dt.datetime, job_id: str | None = None,
            expire: float | None = None) -> list[str]:
    """Hold quota for a pending change; returns the reservation ids.

    Resources are taken in sorted order (so ``backup_gigabytes`` is reported
    before ``backups``, as Cinder does, and locks are always taken in one
    order). A resource is over when its limit is not -1 and
    ``in_use + reserved + delta > limit``; negative deltas never fail.

    :raises OverQuota: nothing is held when any resource is over (the caller's
        transaction rolls back the ones already held).
    """
    limits = get_limits(session, project_id, settings)
    expires_at = now + dt.timedelta(seconds=settings.reservation_expire if expire is None
                                    else expire)
    ids = []
    for resource in sorted(deltas):
        delta = int(deltas[resource])
        usage_id = _usage_id(session, project_id, resource)
        limit = limits.get(resource, -1)
        if delta > 0:
            cond = [QuotaUsage.id == usage_id,
                    QuotaUsage.in_use + QuotaUsage.reserved + delta <= MAX_USAGE]
            if limit >= 0:
                cond.append(QuotaUsage.in_use + QuotaUsage.reserved + delta <= limit)
            result = session.execute(update(QuotaUsage).where(*cond).values(
                reserved=QuotaUsage.reserved + delta, updated_at=now))
            if result.rowcount != 1:
                usage = session.get(QuotaUsage, usage_id, populate_existing=True)
                raise _over_quota(resource, delta, limit, usage.in_use + usage.reserved)
        rid = new_id()
        session.execute(insert(Reservation).values(
            id=rid, usage_id=usage_id, project_id=project_id, resource=resource, delta=delta,
            expire=expires_at, job_id=job_id, created_at=now))
        ids.append(rid)
    return ids


def _finish(session: Session, reservation_ids: list[str], *, apply: bool, now: dt.datetime) -> int:
    done = 0
    for res in session.scalars(select(Reservation).where(Reservation.id.in_(reservation_ids))
                               .order_by(Reservation.usage_id)).all():
        # Deleting the reservation first makes commit/rollback/expiry exclusive.
        if session.execute(delete(Reservation).where(Reservation.id == res.id)).rowcount != 1:
            continue
        d = res.delta
        values = {"updated_at": now}
        if d >= 0:
            values["reserved"] = _clamped(session, QuotaUsage.reserved - d)
        if apply:
            values["in_use"] = _clamped(session, QuotaUsage.in_use + d)
        session.execute(update(QuotaUsage).where(QuotaUsage.id == res.usage_id).values(**values))
        done += 1
    return done


def _clamped(session: Session, expr):
    if dialect_of(session).name == "sqlite":
        return func.max(expr, 0)
    return func.greatest(expr, 0)


def commit(session: Session, reservation_ids: list[str], *, now: dt.datetime) -> None:
    """Turn reservations into usage."""
    _finish(session, reservation_ids, apply=True, now=now)


def rollback(session: Session, reservation_ids: list[str], *, now: dt.datetime) -> None:
    """Release reservations without using them."""
    _finish(session, reservation_ids, apply=False, now=now)


def check(session: Session, project_id: str, deltas: dict[str, int],
          settings: Settings) -> None:
    """Refuse, without charging or locking, what charge() would refuse right now.

    For a rule that must answer 413 before another check: the charge itself,
    later in the same transaction, stays the one that counts.

    :raises OverQuota:
    """
    limits = get_limits(session, project_id, settings)
    for resource in sorted(deltas):
        limit = limits.get(resource, -1)
        if limit < 0:
            continue
        consumed = quota_rows.consumed(session, project_id, resource)
        if consumed is None:
            consumed = recount(session, project_id, resource)
        if consumed + int(deltas[resource]) > limit:
            raise _over_quota(resource, int(deltas[resource]), limit, consumed)


def charge(session: Session, project_id: str, deltas: dict[str, int], settings: Settings, *,
           now: dt.datetime, counted: bool = False) -> None:
    """Check and add usage in one step, in the transaction that creates the counted rows.

    The same rule as reserve() + commit(), as one conditional UPDATE per
    resource (keyed by project and resource: no id lookup) and no reservation
    row: the transaction that inserts the counted rows is the reservation.
    A usage row created on first use starts from a recount of the tables:
    pass ``counted=True`` when this transaction already wrote the counted rows
    (the recount then leaves them out). Charging last, just before the
    commit, holds the project's usage row locks for the shortest time: every
    create of a project queues on them. Deltas must not be negative
    (release() gives back).

    :raises OverQuota:
    """
    limits = get_limits(session, project_id, settings)
    for resource in sorted(deltas):  # one lock order for every request: no deadlocks
        delta = int(deltas[resource])
        if delta < 0:
            raise ValueError("charge() takes positive deltas; use release()")
        limit = limits.get(resource, -1)
        if quota_rows.add_usage(session, project_id, resource, delta, limit=limit, now=now):
            continue
        # No row changed: the limit is hit, or the usage row did not exist when the UPDATE
        # looked (first use; another request may have committed it since).
        consumed = quota_rows.consumed(session, project_id, resource)
        if consumed is None:
            _usage_id(session, project_id, resource, minus=delta if counted else 0)
        elif 0 <= limit < consumed + delta:
            raise _over_quota(resource, delta, limit, consumed)
        if quota_rows.add_usage(session, project_id, resource, delta, limit=limit, now=now):
            continue
        consumed = quota_rows.consumed(session, project_id, resource)
        raise _over_quota(resource, delta, limit, consumed)


def release(session: Session, project_id: str, deltas: dict[str, int], *, now: dt.datetime) -> None:
    """Give usage back in the transaction that deletes the counted rows (never below 0)."""
    for resource in sorted(deltas):
        usage_id = _usage_id(session, project_id, resource)
        session.execute(update(QuotaUsage).where(QuotaUsage.id == usage_id).values(
            in_use=_clamped(session, QuotaUsage.in_use - int(deltas[resource])), updated_at=now))


def expire_reservations(session: Session, *, now: dt.datetime) -> int:
    """Roll back every reservation past its expiry; returns how many."""
    ids = list(session.scalars(select(Reservation.id).where(Reservation.expire < now)))
    return _finish(session, ids, apply=False, now=now) if ids else 0


def usage(session: Session, project_id: str) -> dict[str, tuple[int, int]]:
    """(in_use, reserved) per resource for a project."""
    out = {r: (0, 0) for r in RESOURCES}
    for row in session.scalars(select(QuotaUsage).where(QuotaUsage.project_id == project_id)):
        out[row.resource] = (int(row.in_use), int(row.reserved))
    return out


def reconcile(session: Session, *, now: dt.datetime) -> list[dict]:
    """Recount every usage row and repair drift; returns the corrections made."""
    drift = []
    for row in session.scalars(select(QuotaUsage).with_for_update()).all():
        actual = recount(session, row.project_id, row.resource)
        held = session.scalar(select(func.coalesce(func.sum(Reservation.delta), 0)).where(
            Reservation.usage_id == row.id, Reservation.delta > 0)) or 0
        if row.in_use != actual or row.reserved != held:
            drift.append({"project_id": row.project_id, "resource": row.resource,
                          "in_use": row.in_use, "actual": actual,
                          "reserved": row.reserved, "held": int(held)})
            row.in_use = actual
            row.reserved = int(held)
            row.updated_at = now
    for item in drift:
        log.warning("quota drift repaired: %s", item)
    return drift


def set_limits(session: Session, project_id: str, limits: dict[str, int],
               settings: Settings) -> None:
    """Set per-project limits; a limit below current use is refused.

    :raises InvalidInput:
    """
    current = usage(session, project_id)
    for resource, limit in limits.items():
        in_use, reserved = current.get(resource, (0, 0))
        if limit >= 0 and limit < in_use + reserved:
            raise errors.InvalidInput(
                f"Quota limit {limit} for {resource} must be equal or greater than existing "
                f"resources. Current usage is {in_use + reserved}.")
        row = session.scalar(select(Quota).where(Quota.project_id == project_id,
                                                 Quota.resource == resource))
        if row is None:
            session.add(Quota(project_id=project_id, resource=resource, hard_limit=limit))
        else:
            row.hard_limit = limit


def reset_limits(session: Session, project_id: str) -> None:
    """Back to the defaults."""
    session.execute(delete(Quota).where(Quota.project_id == project_id))
