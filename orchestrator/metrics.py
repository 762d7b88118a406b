"""Prometheus metrics of the control plane: the API's own, and gauges computed from SQL.

Two kinds of numbers, kept apart on purpose:

* **Process counters** (requests by route template, method and status, and
  their latency): recorded by each API process. Under granian's several
  worker processes they are kept in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh
  directory under the state directory, set by ``orchestrator api`` / ``run``
  before the server starts, see ``serve.api_environment``) and summed at
  scrape time, so a scrape that lands on any worker process sees them all.
* **State gauges** (``StateCollector``): read from the database and the broker
  when Prometheus scrapes, never from process memory, so they are right after
  a restart and the same on every API process: backups by status, the age of
  the newest good backup, volumes whose newest good backup is too old, jobs
  in flight, live and down services per zone and binary, queue depth.

No label carries an unbounded or project-identifying value: routes are URL
templates (``/v3/<project:project_id>/backups/<backup_id>``), never URLs;
no backup, volume or project id ever appears.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Iterable
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import REGISTRY
from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import and_
from sqlalchemy import exists
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator import hosts
from orchestrator.config import Settings
from orchestrator.config import without_password
from orchestrator.db import utcnow
from orchestrator.jobs import queue_for
from orchestrator.models import Backup
from orchestrator.models import Job
from orchestrator.models import Service
from orchestrator.models import Volume
from orchestrator.states import ACTIVE_JOB_STATES
from orchestrator.states import BackupStatus
from orchestrator.states import VolumeStatus

log = logging.getLogger(__name__)

PREFIX = "orchestrator"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED_ROUTE = "unmatched"  # a URL no route knows: one label value for all of them
# Volumes in these states are not expected to have backups yet (or any more).
_NOT_PROTECTABLE = (VolumeStatus.CREATING, VolumeStatus.DELETING, VolumeStatus.DELETED,
                    VolumeStatus.ERROR, VolumeStatus.ERROR_DELETING)
_QUEUE_BINARIES = (hosts.BACKUP_BINARY, hosts.VOLUME_BINARY)

REQUESTS = Counter(f"{PREFIX}_api_requests", "API requests answered, by route template, "
                   "method and status.", ["route", "method", "status"])
REQUEST_SECONDS = Histogram(f"{PREFIX}_api_request_duration_seconds",
                            "Time to answer an API request, by route template, method and "
                            "status.", ["route", "method", "status"], buckets=LATENCY_BUCKETS)


_REQUEST_SERIES: dict[tuple[str, str, int], tuple] = {}  # bounded: routes x methods x codes


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request (``route`` is its URL rule, never its URL)."""
    series = _REQUEST_SERIES.get((route, method, status))
    if series is None:
        code = str(status)
        series = _REQUEST_SERIES[(route, method, status)] = (
            REQUESTS.labels(route, method, code), REQUEST_SECONDS.labels(route, method, code))
    series[0].inc()
    series[1].observe(seconds)


# ----------------------------------------------------------------------------- multiprocess


def multiproc_dir(settings: Settings, name: str) -> Path:
    """Where the processes of one server (``api-8776``, ``worker@node-a``) keep their
    metric files."""
    return Path(settings.state_dir) / "metrics" / name


def fresh_multiproc_dir(path: Path) -> Path:
    """Empty ``path`` (created if needed): call before the server's processes start, so no
    dead process's files are summed in."""
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.glob("*.db"):
        entry.unlink(missing_ok=True)
    return path


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def forget_dead_processes() -> None:
    """Drop the live-gauge files of processes that are gone (a pool child killed mid-job
    never says so itself)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    for entry in Path(directory).glob("gauge_live*_*.db"):
        try:
            pid = int(entry.stem.rsplit("_", 1)[1])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)
        except PermissionError:
            pass


class _Forward(Collector):
    """The default registry's metrics (single-process mode), inside a scrape registry."""

    def collect(self):
        yield from REGISTRY.collect()


def render(extra: Iterable[Collector] = ()) -> tuple[bytes, str]:
    """The exposition text of this process group's metrics plus ``extra`` collectors."""
    registry = CollectorRegistry()
    if multiprocess_mode():
        forget_dead_processes()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward())
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


# ----------------------------------------------------------------------------- SQL gauges


def policy_backup_ages(session: Session, now: dt.datetime) -> Iterator[tuple[str, float]]:
    """Hook for backup policies: (policy name, seconds since the newest ``available``
    backup of any volume the policy covers). Policies do not exist yet: nothing.

    When they land, yield one pair per policy here; ``StateCollector`` exports them as
    ``orchestrator_policy_newest_backup_age_seconds{policy=...}`` (policy names are
    operator-defined and few, so they make a bounded label).
    """
    return iter(())


def _backup_time():
    """When a backup's data was taken (Cinder's data_timestamp, else its creation)."""
    return func.coalesce(Backup.data_timestamp, Backup.created_at)


def stale_volume_count(session: Session, *, now: dt.datetime, older_than: float) -> int:
    """Volumes that exist since before the cut-off and have no ``available`` backup taken
    since then (none at all counts too)."""
    cutoff = now - dt.timedelta(seconds=older_than)
    fresh = exists().where(and_(Backup.volume_id == Volume.id, Backup.deleted.is_(False),
                                Backup.status == BackupStatus.AVAILABLE,
                                _backup_time() >= cutoff))
    return session.scalar(select(func.count()).select_from(Volume).where(
        Volume.deleted.is_(False), Volume.status.not_in(_NOT_PROTECTABLE),
        Volume.created_at < cutoff, ~fresh)) or 0


class StateCollector(Collector):
    """Gauges computed from SQL and the broker at each scrape (see the module docstring).

    A part that cannot be read is left out of that scrape and reported by
    ``orchestrator_state_up{source="database"|"broker"}`` = 0.
    """

    def __init__(self, settings: Settings, db, celery_app=None):
        self.settings, self.db, self.celery_app = settings, db, celery_app

    def describe(self):
        return []  # computed at scrape time: nothing to check at registration

    def collect(self):
        started = time.monotonic()
        up = GaugeMetricFamily(f"{PREFIX}_state_up", "Whether the source of the state gauges "
                               "answered this scrape (1) or not (0).", labels=["source"])
        queues: list[str] = []
        try:
            families, queues = self._from_database()
            yield from families
            up.add_metric(["database"], 1)
        except Exception as exc:
            log.warning("metrics: database unreadable: %s", without_password(str(exc)))
            up.add_metric(["database"], 0)
        if self.celery_app is not None:
            try:
                yield self._queue_depths(queues)
                up.add_metric(["broker"], 1)
            except Exception as exc:
                log.warning("metrics: broker unreadable: %s", without_password(str(exc)))
                up.add_metric(["broker"], 0)
        yield up
        took = GaugeMetricFamily(f"{PREFIX}_state_scrape_duration_seconds",
                                 "Time taken to compute the state gauges.")
        took.add_metric([], time.monotonic() - started)
        yield took

    def _from_database(self) -> tuple[list, list[str]]:
        now = utcnow()
        families = []
        with self.db.scope(write=False) as session:
            backups = GaugeMetricFamily(f"{PREFIX}_backups", "Backups (not deleted) by "
                                        "status.", labels=["status"])
            counts = dict(session.execute(
                select(Backup.status, func.count()).where(Backup.deleted.is_(False))
                .group_by(Backup.status)).all())
            for status in BackupStatus:
                if status != BackupStatus.DELETED:
                    backups.add_metric([status.value], counts.pop(status.value, 0))
            for status, n in counts.items():  # a status this code does not know yet
                backups.add_metric([str(status)], n)
            families.append(backups)

            newest = session.scalar(select(func.max(_backup_time())).where(
                Backup.deleted.is_(False), Backup.status == BackupStatus.AVAILABLE))
            age = GaugeMetricFamily(f"{PREFIX}_newest_available_backup_age_seconds",
                                    "Seconds since the newest available backup was taken "
                                    "(absent while there is none).")
            if newest is not None:
                age.add_metric([], max(0.0, (now - newest).total_seconds()))
            families.append(age)

            threshold = self.settings.backup_stale_after
            stale = GaugeMetricFamily(
                f"{PREFIX}_volumes_without_recent_backup",
                "Volumes older than ORCH_BACKUP_STALE_AFTER whose newest available backup "
                "is older than that, or that have none.")
            stale.add_metric([], stale_volume_count(session, now=now, older_than=threshold))
            families.append(stale)
            limit = GaugeMetricFamily(f"{PREFIX}_backup_stale_after_seconds",
                                      "ORCH_BACKUP_STALE_AFTER: the age from which a volume's "
                                      "newest good backup counts as stale.")
            limit.add_metric([], threshold)
            families.append(limit)

            per_policy = GaugeMetricFamily(
                f"{PREFIX}_policy_newest_backup_age_seconds",
                "Seconds since the newest available backup of the volumes a backup policy "
                "covers.", labels=["policy"])
            for name, seconds in policy_backup_ages(session, now):
                per_policy.add_metric([name], seconds)
            families.append(per_policy)

            in_flight = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs not yet ended, by "
                                          "operation and state.", labels=["operation", "state"])
            for op, state, n in session.execute(
                    select(Job.op, Job.state, func.count())
                    .where(Job.state.in_(ACTIVE_JOB_STATES)).group_by(Job.op, Job.state)):
                in_flight.add_metric([op, state], n)
            families.append(in_flight)

            services = GaugeMetricFamily(
                f"{PREFIX}_services", "Services (cinder-backup, cinder-volume, "
                "cinder-scheduler) by zone, binary and state (up, down, disabled).",
                labels=["zone", "binary", "state"])
            tally: dict[tuple[str, str, str], int] = {}
            queues = ["orchestrator"]
            for service in session.scalars(select(Service)):
                live = hosts.is_up(service, now=now, down_time=self.settings.service_down_time)
                state = "disabled" if service.disabled else "up" if live else "down"
                key = (service.availability_zone, service.binary, state)
                tally[key] = tally.get(key, 0) + 1
                if service.binary in _QUEUE_BINARIES:
                    queues.append(queue_for(hosts.TOPICS[service.binary], service.host))
            for (zone, binary, state), n in sorted(tally.items()):
                services.add_metric([zone, binary, state], n)
            families.append(services)
        return families, queues

    def _queue_depths(self, queues: list[str]) -> GaugeMetricFamily:
        """Messages waiting in each queue (per host: the fleet bounds the label)."""
        depth = GaugeMetricFamily(f"{PREFIX}_queue_messages", "Messages waiting in a broker "
                                  "queue.", labels=["queue"])
        with self.celery_app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                   timeout=self.settings.health_timeout)
            for queue in queues:
                depth.add_metric([queue], queue_depth(conn, queue))
        return depth


def queue_depth(conn, queue: str) -> int:
    """Messages in ``queue``; 0 for a queue the broker does not have (yet)."""
    channel = conn.channel()
    try:
        return channel.queue_declare(queue=queue, passive=True).message_count
    except conn.channel_errors:
        return 0  # not declared: nothing was ever sent there, or it was drained and removed
    finally:
        try:
            channel.close()
        except Exception:
            pass
