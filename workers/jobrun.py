"""What a running job holds: its lease, its cancellation check, its progress reports."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from sqlalchemy import select

from orchestrator import jobs
from orchestrator.config import Settings
from orchestrator.db import Database
from orchestrator.db import utcnow
from orchestrator.models import Job
from orchestrator.persistence import backups as backup_rows

log = logging.getLogger(__name__)

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
    """One claimed job while its run half works."""

    settings: Settings
    db: Database
    job: Job
    owner: str
    lease: Lease
    # What the operation's prepare returned in the claim's transaction.
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


class ProgressRecorder:
    """Writes the data path's progress to the job's own row (and, given ``backup_id``, to
    the backup row: a create's progress stays with its backup), at most once per
    PROGRESS_EVERY_S and always at done == total.

    The job's rate is of the bytes actually read or written: the holes and zero ranges the
    data path reports as skipped count as done but not in it (the backup row's rate, kept
    as it was, is of the bytes covered).

    With ``write_first=False`` the first report (0 bytes, at the start) is not written, and
    with ``write_last=False`` neither is the one at done == total: for a caller that has
    already written the start (the create's prepare) and writes the end itself on
    completion (``final_rate`` is the rate that report carried).
    """

    takes_skipped = True  # the data path passes skipped=... (datapath/progress.py)

    def __init__(self, run: JobRun, backup_id: str | None = None, *, write_first: bool = True,
                 write_last: bool = True):
        self.db, self.job_id = run.db, run.job.id
        self.backup_id, self.write_last = backup_id, write_last
        self.start = time.monotonic()
        self.last = 0.0 if write_first else self.start
        self.final_rate: float | None = None

    def __call__(self, done: int, total: int, skipped: int = 0) -> None:
        t = time.monotonic()
        if t - self.last < PROGRESS_EVERY_S and done < total:
            return
        elapsed = max(t - self.start, 1e-6)
        rate = done / elapsed  # the backup row's rate: of the volume covered, as before
        if done >= total:
            self.final_rate = rate
            if not self.write_last:
                return
        self.last = t
        with self.db.scope() as session:
            jobs.record_progress(session, self.job_id, done=done, total=total,
                                 skipped=skipped, rate=max(done - skipped, 0) / elapsed,
                                 now=utcnow())
            if self.backup_id is not None:
                backup_rows.set_progress(session, self.backup_id, done, total, rate)
