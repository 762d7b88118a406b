"""Service registry: heartbeats, liveness and host choice.

Liveness has one source: the ``services`` row each worker refreshes every
``heartbeat_interval`` seconds. A host is up while its last heartbeat is at
most ``service_down_time`` old, and only enabled, up hosts get new work.
"""
from __future__ import annotations

import datetime as dt
import functools
import random

from sqlalchemy import bindparam
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from orchestrator import errors
from orchestrator.db import dialect_of
from orchestrator.models import Service

BACKUP_BINARY = "cinder-backup"
VOLUME_BINARY = "cinder-volume"
SCHEDULER_BINARY = "cinder-scheduler"
TOPICS = {BACKUP_BINARY: "backup", VOLUME_BINARY: "volume", SCHEDULER_BINARY: "orchestrator"}


def record_heartbeat(session: Session | Connection, host: str, binaries: str | list[str],
                     zone: str, *, now: dt.datetime, boot_id: str | None = None,
                     version: str | None = None) -> None:
    """Insert or refresh the services rows of a host's roles (one UPDATE in the common case).

    Takes a Session or, cheaper for the heartbeat loop, a Core Connection
    (``Database.beat``: on PostgreSQL in autocommit, so a beat is one statement).
    """
    binaries = [binaries] if isinstance(binaries, str) else list(binaries)
    values = {"updated_at": now, "availability_zone": zone}
    if boot_id is not None:
        values["boot_id"] = boot_id
    if version is not None:
        values["version"] = version
    result = session.execute(
        update(Service)
        .where(Service.host == host, Service.binary.in_(binaries))
        .values(report_count=Service.report_count + 1, **values)
    )
    if result.rowcount == len(binaries):
        return
    # A role seen for the first time: insert it, or refresh it if another process
    # inserted it meanwhile (one statement, no savepoint: works in autocommit too).
    dialect = dialect_of(session).name
    upsert = (pg_insert if dialect == "postgresql" else sqlite_insert)(Service).values([
        {"host": host, "binary": binary, "topic": TOPICS.get(binary, binary), "created_at": now,
         "report_count": 1, "disabled": False, **values} for binary in binaries])
    session.execute(upsert.on_conflict_do_update(
        index_elements=[Service.host, Service.binary],
        set_=values))


def mark_stopped(session: Session, host: str, binaries: list[str]) -> None:
    """Make a cleanly stopping host look down at once, so it gets no new work."""
    session.execute(update(Service).where(Service.host == host, Service.binary.in_(binaries))
                    .values(updated_at=None))


def is_up(service: Service, *, now: dt.datetime, down_time: float) -> bool:
    """Cinder's rule: a heartbeat no older than the down time."""
    return service.updated_at is not None and \
        service.updated_at >= now - dt.timedelta(seconds=down_time)


def live_hosts(session: Session, binary: str, *, now: dt.datetime, down_time: float,
               az: str | None = None) -> list[Service]:
    """Enabled services of ``binary`` with a fresh heartbeat, in ``az`` when given, by host."""
    cutoff = now - dt.timedelta(seconds=down_time)
    query = select(Service).where(Service.binary == binary, Service.disabled.is_(False),
                                  Service.updated_at >= cutoff)
    if az:
        query = query.where(Service.availability_zone == az)
    return list(session.scalars(query.order_by(Service.host)))


@functools.cache
def _host_choice_statement(by_zone: bool, same_host: bool):
    """Names of the live enabled hosts of a binary (built once per shape)."""
    query = select(Service.host).where(Service.binary == bindparam("binary"),
                                       Service.disabled.is_(False),
                                       Service.updated_at >= bindparam("cutoff"))
    if by_zone:
        query = query.where(Service.availability_zone == bindparam("az"))
    if same_host:
        query = query.where(Service.host == bindparam("host"))
    return query


def select_host(session: Session, binary: str, *, now: dt.datetime, down_time: float,
                az: str | None = None, preferred: str | None = None,
                use_same_host: bool = False, rng: random.Random | None = None) -> str:
    """Pick a live host for new work.

    With ``use_same_host`` and a ``preferred`` host, only that host qualifies
    (Cinder's backup_use_same_host); otherwise a random live host in the zone.
    Only host names are read (one indexed query), so the choice stays cheap
    with thousands of hosts.

    :raises NoLiveHost: when no enabled host in the zone has a fresh heartbeat.
    """
    same_host = bool(use_same_host and preferred)
    params = {"binary": binary, "cutoff": now - dt.timedelta(seconds=down_time)}
    if az:
        params["az"] = az
    if same_host:
        params["host"] = preferred
    candidates = list(session.scalars(_host_choice_statement(bool(az), same_host), params))
    if not candidates:
        raise errors.NoLiveHost(binary, az)
    return (rng or random).choice(candidates)


def list_services(session: Session, *, host: str | None = None,
                  binary: str | None = None) -> list[Service]:
    query = select(Service)
    if host:
        query = query.where(Service.host == host)
    if binary:
        query = query.where(Service.binary == binary)
    return list(session.scalars(query.order_by(Service.binary, Service.host)))


def check_zone(session: Session, zone: str) -> None:
    """:raises InvalidAvailabilityZone: no service was ever registered in ``zone``."""
    if session.scalar(select(Service.id).where(Service.availability_zone == zone)
                      .limit(1)) is None:
        raise errors.InvalidAvailabilityZone(zone)


def availability_zones(session: Session, *, now: dt.datetime,
                       down_time: float) -> dict[str, bool]:
    """Every zone with a registered service, and whether any of its services is up."""
    zones: dict[str, bool] = {}
    for svc in session.scalars(select(Service)):
        up = is_up(svc, now=now, down_time=down_time) and not svc.disabled
        zones[svc.availability_zone] = zones.get(svc.availability_zone, False) or up
    return zones
