"""Each job keeps its own progress: holes counted apart, a timestamp, the create's kept."""
from __future__ import annotations

import datetime as dt
import os
import uuid

import pytest
from sqlalchemy import select

from orchestrator import api
from orchestrator import db as dbmod
from orchestrator import hosts
from orchestrator.config import Settings
from orchestrator.context import RequestContext
from orchestrator.db import utcnow
from orchestrator.keys import create_kek_file
from orchestrator.migrate import upgrade
from orchestrator.models import Backup
from orchestrator.models import Job
from orchestrator.models import Volume
from workers import manager
from workers.datapath.progress import ProgressTicker
from workers.volumes import FileVolumeBackend

MiB, GiB = 1 << 20, 1 << 30
DEMO = RequestContext("demo", "demo")


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    url = request.getfixturevalue("postgres").url if request.param == "postgresql" else ""
    s = Settings(state_dir=str(tmp_path), broker_url="memory://", database_url=url)
    create_kek_file(s.kek_file)         # encryption is on by default
    upgrade(s.database_url)
    yield s
    d = dbmod._databases.pop(s.database_url, None)
    if d is not None:
        d.dispose()


def _supports_holes(path) -> bool:
    with open(path, "rb") as f:
        try:
            return os.lseek(f.fileno(), 0, os.SEEK_DATA) > 0
        except OSError:
            return False


def test_ticker_reports_skipped_only_to_callbacks_that_take_it():
    plain, keyed = [], []

    def with_skipped(done, total, skipped):
        keyed.append((done, total, skipped))
    with_skipped.takes_skipped = True
    for callback in (lambda done, total: plain.append((done, total)), with_skipped):
        ticker = ProgressTicker(100, callback, None, byte_interval=1)
        ticker.skip(40)
        ticker.report(40)
        ticker.report(100)
    assert plain == [(40, 100), (100, 100)]
    assert keyed == [(40, 100, 40), (100, 100, 40)]


def test_restore_progress_is_the_jobs_own_and_leaves_the_create_alone(settings):
    database = dbmod.get_database(settings.database_url)
    with database.scope() as s:
        hosts.record_heartbeat(s, "node1", [hosts.BACKUP_BINARY, hosts.VOLUME_BINARY],
                               zone="nova", now=utcnow())
        vol = Volume(project_id="demo", user_id="demo", host="node1", availability_zone="nova",
                     size=1, status="available", display_name="src", created_at=utcnow())
        s.add(vol)
        s.flush()
        volume_id = vol.id
    volumes = FileVolumeBackend(settings.volume_path)
    volumes.create_volume(volume_id, 1)  # sparse 1 GiB
    path = volumes.volume_path(volume_id)
    with open(path, "r+b") as f:  # 8 MiB of data at 512 MiB, the rest a hole
        f.seek(512 * MiB)
        f.write(os.urandom(8 * MiB))
    with database.scope() as s:
        backup, (job,) = api.create_backup(s, DEMO, settings, volume_id=volume_id, now=utcnow())
        backup_id, create_job = backup.id, job.id
    assert manager.run_job(settings, create_job, owner="w1") == "succeeded"
    with database.scope(write=False) as s:
        created = s.get(Backup, backup_id)
        create_view = (created.progress_bytes, created.progress_total, created.progress_rate)
    assert create_view[:2] == (GiB, GiB)

    before = utcnow() - dt.timedelta(seconds=1)
    with database.scope() as s:
        _, jobs_ = api.restore_backup(s, DEMO, settings, backup_id, volume_id=volume_id,
                                      name=None, now=utcnow())
        restore_job = jobs_[-1].id
    assert manager.run_job(settings, restore_job, owner="w1") == "succeeded"
    with database.scope(write=False) as s:
        job = s.get(Job, restore_job)
        b = s.get(Backup, backup_id)
        # The restore did not overwrite what the create recorded on the backup.
        assert (b.progress_bytes, b.progress_total, b.progress_rate) == create_view
        progress = job.progress
        assert progress is not None, "the restore wrote no progress of its own"
        assert (progress["bytes_done"], progress["bytes_total"]) == (GiB, GiB)
        # Everything but the data was zeroed (a hole punched), not written: counted apart.
        assert GiB - 16 * MiB <= progress["bytes_skipped"] <= GiB - 8 * MiB, progress
        assert progress["rate_bytes_per_s"] is not None
        stamp = dt.datetime.strptime(progress["updated_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
        assert before <= stamp <= utcnow()
        # The create's job keeps its own (here: none written, the backup row has it).
        assert s.scalar(select(Job.progress).where(Job.id == create_job)) != progress


def test_backup_create_counts_holes_as_skipped(settings, tmp_path):
    """The data path's create reports the holes it never read as skipped."""
    from workers.node import backup_driver

    volumes = FileVolumeBackend(settings.volume_path)
    volume_id = str(uuid.uuid4())
    volumes.create_volume(volume_id, 1)
    path = volumes.volume_path(volume_id)
    with open(path, "r+b") as f:
        f.seek(256 * MiB)
        f.write(os.urandom(4 * MiB))
    if not _supports_holes(path):
        pytest.skip(f"the file system under {tmp_path} does not report holes (SEEK_DATA)")
    seen = []

    def progress(done, total, skipped):
        seen.append((done, total, skipped))
    progress.takes_skipped = True
    backup_driver(settings).backup(path, backup_id=str(uuid.uuid4()), volume_id=volume_id,
                                   size_bytes=GiB, container=None, parent=None, volume_meta={},
                                   progress=progress, cancelled=lambda: False)
    done, total, skipped = seen[-1]
    assert (done, total) == (GiB, GiB)
    assert GiB - 8 * MiB <= skipped <= GiB - 4 * MiB, seen[-1]


def test_the_backup_view_reads_the_running_jobs_progress(settings):
    """The read model's running_op/running_progress: the running job's, for a busy backup
    only, decoded as JSON on both databases."""
    from orchestrator import jobs
    from orchestrator.persistence import backups as backup_rows

    database = dbmod.get_database(settings.database_url)
    with database.scope() as s:
        busy = Backup(user_id="u", project_id="p", volume_id=str(uuid.uuid4()),
                      status="restoring", size=1, created_at=utcnow(),
                      progress_bytes=GiB, progress_total=GiB)
        idle = Backup(user_id="u", project_id="p", volume_id=str(uuid.uuid4()),
                      status="available", size=1, created_at=utcnow())
        s.add_all([busy, idle])
        s.flush()
        busy_id, idle_id = busy.id, idle.id
        job = jobs.create(s, "backup_restore", resource_id=busy_id, host="h", project_id="p",
                          now=utcnow())
        # A finished job on the settled backup must not show.
        old = jobs.create(s, "backup_verify", resource_id=idle_id, host="h", project_id="p",
                          now=utcnow())
        s.flush()
        job_id, old_id = job.id, old.id
    with database.scope() as s:
        claimed = jobs.claim(s, job_id, "w1", now=utcnow(), ttl=30)
        assert claimed is not None
        written = jobs.record_progress(s, job_id, done=MiB, total=GiB, skipped=0, rate=5.0,
                                       now=utcnow())
        s.execute(Job.__table__.update().where(Job.id == old_id).values(
            state="succeeded", progress={"bytes_done": 1}))
    with database.scope(write=False) as s:
        row = backup_rows.view_row(s, busy_id, project_id="p", with_metadata=False)
        assert (row.running_op, row.running_progress) == ("backup_restore", written)
        assert row.progress_bytes == GiB  # the create's, untouched
        row = backup_rows.view_row(s, idle_id, project_id=None, with_metadata=True)
        assert (row.running_op, row.running_progress) == (None, None)
