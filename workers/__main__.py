"""`python -m workers --host NAME --zone AZ`: one storage node (or the maintenance worker).

A storage node consumes ``backup.<host>`` and ``volume.<host>`` with a
prefork Celery worker, and a heartbeat thread in the main process keeps its
``cinder-backup`` and ``cinder-volume`` service rows fresh. With
``--maintenance`` it consumes the ``orchestrator`` queue instead (reaper,
re-send, reservation expiry, reconcile) and reports as ``cinder-scheduler``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
import uuid

from billiard.exceptions import WorkerLostError
from celery import signals

from orchestrator import __version__
from orchestrator import hosts
from orchestrator import keys
from orchestrator import logs
from orchestrator import metrics as control_metrics
from orchestrator.config import Settings
from orchestrator.config import default_host
from orchestrator.config import normalise_host
from orchestrator.db import get_database
from orchestrator.db import reset_databases
from orchestrator.db import utcnow
from orchestrator.dispatch import Publisher
from orchestrator.jobs import queue_for
from orchestrator.tasks import MAINTENANCE_QUEUE
from orchestrator.tasks import make_celery
from workers import manager
from workers import metrics
from workers import tasks as _job_tasks  # noqa: F401  (registers the job tasks on every app)

log = logging.getLogger("workers")


class Heartbeat(threading.Thread):
    """Refreshes this node's services rows every heartbeat interval."""

    def __init__(self, settings: Settings, host: str, zone: str, binaries: list[str]):
        super().__init__(name="heartbeat", daemon=True)
        self.settings, self.host, self.zone, self.binaries = settings, host, zone, binaries
        self.boot_id = str(uuid.uuid4())
        self._halt = threading.Event()
        self._last: float | None = None  # monotonic time of the last beat that landed

    def beat(self) -> None:
        db = get_database(self.settings.database_url)
        with db.beat() as conn:
            hosts.record_heartbeat(conn, self.host, self.binaries, self.zone, now=utcnow(),
                                   boot_id=self.boot_id, version=__version__)

    def start(self) -> None:
        """Beat once before returning, so a node is never 'ready' before it is choosable."""
        self._beat_logged()
        super().start()

    def run(self) -> None:
        while not self._halt.wait(self.settings.heartbeat_interval):
            self._beat_logged()

    def _beat_logged(self) -> None:
        started = time.monotonic()
        try:
            self.beat()
        except Exception:
            log.exception("heartbeat failed; retrying in %ss", self.settings.heartbeat_interval)
            return
        done = time.monotonic()
        # A gap near service_down_time makes the API think this node is down: say why.
        if self._last is not None and done - self._last > self.settings.service_down_time / 2:
            log.warning("heartbeat late: %.1f s since the last one (this beat took %.1f s; "
                        "service_down_time is %.0f s)", done - self._last, done - started,
                        self.settings.service_down_time)
        self._last = done

    def stop(self) -> None:
        self._halt.set()
        try:
            db = get_database(self.settings.database_url)
            with db.scope() as session:
                hosts.mark_stopped(session, self.host, self.binaries)
        except Exception:
            log.exception("could not mark %s stopped", self.host)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="orchestrator worker",
        description="One storage node: runs the backup and volume jobs queued for this host "
                    "(queues backup.<host> and volume.<host>) and keeps its cinder-backup and "
                    "cinder-volume service rows alive. With --maintenance, the control-plane "
                    "worker instead (reaper, re-sends, reservation expiry; one or more per "
                    "deployment).",
        epilog="Everything else comes from the ORCH_* settings the API uses too: "
               "ORCH_DATABASE_URL, ORCH_BROKER_URL, ORCH_BACKUP_STORE and ORCH_BACKUP_PATH "
               "(or ORCH_S3_*), ORCH_VOLUME_PATH, ORCH_HEARTBEAT_INTERVAL, ORCH_LEASE_TTL, "
               "ORCH_LOG_LEVEL. See docs/deployment.md.")
    parser.add_argument("--host", default=None, metavar="NAME",
                        help="this node's name, as the API routes jobs to it (default: this "
                             "machine's short host name, lower-cased)")
    parser.add_argument("--zone", default=None, metavar="AZ",
                        help="availability zone the node serves (default: "
                             "ORCH_DEFAULT_AVAILABILITY_ZONE, nova)")
    parser.add_argument("--concurrency", "-c", type=int, default=2, metavar="N",
                        help="jobs run at once on this node, one prefork process each "
                             "(default: 2)")
    parser.add_argument("--maintenance", action="store_true",
                        help="run the control-plane maintenance worker instead of a storage node")
    parser.add_argument("--loglevel", "-l", default=None, type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                        help="log level (default: ORCH_LOG_LEVEL, INFO)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="port of /metrics and /healthcheck (default: "
                             "ORCH_WORKER_METRICS_PORT, 9106; 0: none)")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def _metrics_dir_or_reexec(settings: Settings, nodename: str, argv: list[str]) -> None:
    """Make this process (and its pool) keep metrics in its own, fresh multiprocess directory.

    prometheus_client picks its storage when first imported, from
    PROMETHEUS_MULTIPROC_DIR: when that is not this node's directory yet, set it and run
    again (once); a launcher that sets it (the tests) saves the second start.
    """
    wanted = control_metrics.multiproc_dir(settings, nodename)
    if os.environ.get(control_metrics.MULTIPROC_ENV) != str(wanted):
        os.environ[control_metrics.MULTIPROC_ENV] = str(wanted)
        os.execv(sys.executable, [sys.executable, "-m", "workers", *argv])
    # Nothing of this process is in it yet (every worker metric has labels, so no file is
    # opened before a job runs): what is there is a previous run's.
    control_metrics.fresh_multiproc_dir(wanted)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    settings = Settings.load("python -m workers")
    if settings.encryption and not args.maintenance:
        try:
            keys.kek_provider(settings)
        except keys.KeyError_ as e:
            print(f"python -m workers: encryption is on (ORCH_ENCRYPTION) but there is no "
                  f"usable key encryption key: {e}. Set ORCH_KEK or ORCH_KEK_FILE (or "
                  "ORCH_ENCRYPTION=false to write plaintext); not starting.", file=sys.stderr)
            return 2
    host = normalise_host(args.host) if args.host else default_host()
    zone = args.zone or settings.default_availability_zone
    loglevel = (args.loglevel or settings.log_level).upper()
    logs.configure(loglevel, settings.log_format)
    if args.maintenance:
        queues = [MAINTENANCE_QUEUE]
        binaries = [hosts.SCHEDULER_BINARY]
        nodename = f"maintenance@{host}"
    else:
        queues = [queue_for("backup", host), queue_for("volume", host)]
        binaries = [hosts.BACKUP_BINARY, hosts.VOLUME_BINARY]
        nodename = f"worker@{host}"
    metrics_port = settings.worker_metrics_port if args.metrics_port is None \
        else args.metrics_port
    if metrics_port:
        _metrics_dir_or_reexec(settings, nodename, argv)
    app = make_celery(settings)
    heartbeat = Heartbeat(settings, host, zone, binaries)
    status = metrics.NodeStatus(nodename)
    server = None
    if metrics_port:
        try:
            server = metrics.MetricsServer(settings, get_database(settings.database_url), app,
                                           status, host=settings.worker_metrics_host,
                                           port=metrics_port).start()
            log.info("%s: /metrics and /healthcheck on %s:%d", nodename,
                     settings.worker_metrics_host, server.port)
        except OSError as exc:  # the node still works; its operator is told why it is dark
            log.error("%s: no /metrics or /healthcheck, port %s:%d: %s", nodename,
                      settings.worker_metrics_host, metrics_port, exc)

    @signals.worker_process_init.connect(weak=False)
    def _child_init(**_):
        reset_databases()  # never share engine connections across fork

    @signals.worker_init.connect(weak=False)
    def _cleanup(**_):
        if not args.maintenance:
            n = manager.cleanup_after_restart(settings, [nodename], publisher=Publisher(app))
            if n:
                log.warning("failed %d job(s) left running by a previous run of %s", n, nodename)

    @signals.task_failure.connect(weak=False)
    def _pool_process_died(task_id=None, exception=None, **_):
        # In this (the parent) process: the pool child that ran the job is gone, so
        # nothing else will end the job before its lease runs out.
        if isinstance(exception, WorkerLostError) and task_id:
            manager.end_lost_job(settings, task_id, owner=nodename, why=str(exception),
                                 publisher=Publisher(app))

    @signals.worker_ready.connect(weak=False)
    def _ready(**_):
        heartbeat.start()
        status.ready = True
        log.info("%s ready: queues %s, zone %s", nodename, ",".join(queues), zone)

    @signals.worker_shutting_down.connect(weak=False)
    def _stopping(**_):
        status.stopping = True

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_):
        status.stopping = True
        heartbeat.stop()
        if server is not None:
            server.stop()

    app.worker_main([
        # JSON logs: no text banner on stdout (the "ready" line says what it said).
        *(["--quiet"] if settings.log_format == "json" else []),
        "worker", "-n", nodename, "-Q", ",".join(queues), "-P", "prefork",
        "-c", str(args.concurrency), "-E", "--without-mingle", "--without-gossip",
        "-l", loglevel,
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
