"""50 concurrent creates against a quota of 10: exactly 10 accepted, usage exact.

On PostgreSQL (row locks) and on SQLite with several API processes (granian).
"""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from orch_testlib import ApiProcess
from orch_testlib import make_settings
from sqlalchemy import func
from sqlalchemy import select

from orchestrator import hosts
from orchestrator import quota
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.migrate import upgrade
from orchestrator.models import Backup
from orchestrator.models import Volume
from orchestrator.models import new_id
from workers.volumes import FileVolumeBackend

N_REQUESTS = 50
LIMIT = 10


def race(settings, start_worker) -> None:
    db = get_database(settings.database_url)
    worker = start_worker("race-node", "nova")
    backend = FileVolumeBackend(settings.volume_path)
    with db.scope() as s:
        quota.set_limits(s, "demo", {"backups": LIMIT}, settings)
        ids = []
        for _ in range(N_REQUESTS):
            vid = new_id()
            s.add(Volume(id=vid, project_id="demo", user_id="demo", host="race-node",
                         availability_zone="nova", size=1, status="available", created_at=utcnow()))
            backend.create_volume(vid, 1)
            ids.append(vid)
    api = ApiProcess(settings, workers=4).wait_ready()
    try:
        def create(vid):
            r = requests.post(f"{api.url}/v3/backups", timeout=60,
                              json={"backup": {"volume_id": vid}},
                              headers={"X-Auth-Token": "demo:demo"})
            return r.status_code, r.text

        with ThreadPoolExecutor(N_REQUESTS) as pool:
            results = list(pool.map(create, ids))
    finally:
        api.stop()
    codes = Counter(code for code, _ in results)
    # A 503 here means the node looked down: its log says whether a heartbeat was late.
    assert codes == {202: LIMIT, 413: N_REQUESTS - LIMIT}, (results, worker.log[-3000:])
    assert all("BackupLimitExceeded" in text for code, text in results if code == 413)
    with db.scope(write=False) as s:
        assert s.scalar(select(func.count()).select_from(Backup).where(
            Backup.deleted.is_(False))) == LIMIT
        assert quota.usage(s, "demo")["backups"] == (LIMIT, 0)
        assert quota.usage(s, "demo")["backup_gigabytes"] == (LIMIT, 0)
        busy = s.scalar(select(func.count()).select_from(Volume).where(
            Volume.status != "available"))
        assert busy <= LIMIT  # only accepted requests touched a volume


def test_concurrent_creates_on_postgres(tmp_path, redis_server, start_worker_factory, postgres):
    settings = make_settings(tmp_path / "state", f"{redis_server.url[:-1]}2",
                             database_url=postgres.url)
    upgrade(settings.database_url)
    race(settings, start_worker_factory(settings))


def test_concurrent_creates_on_sqlite_with_several_api_processes(settings, start_worker):
    race(settings, start_worker)


def test_live_host_required(settings):
    with get_database(settings.database_url).scope(write=False) as s:
        with pytest.raises(Exception, match="could not be found"):
            hosts.select_host(s, hosts.BACKUP_BINARY, now=utcnow(), down_time=5)
