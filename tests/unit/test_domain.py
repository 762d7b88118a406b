"""Unit tests of the tricky domain pieces against a real SQLite database."""
from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy import update

from orchestrator import errors
from orchestrator import hosts
from orchestrator import jobs
from orchestrator import paging
from orchestrator import quota
from orchestrator.config import Settings
from orchestrator.db import Database
from orchestrator.db import utcnow
from orchestrator.http.microversion import negotiate
from orchestrator.migrate import upgrade
from orchestrator.models import Backup
from orchestrator.models import QuotaUsage
from orchestrator.persistence import jobs as job_rows

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


@pytest.fixture
def cfg(tmp_path):
    s = Settings(state_dir=str(tmp_path), broker_url="memory://")
    upgrade(s.database_url)
    return s


@pytest.fixture
def database(cfg):
    d = Database(cfg.database_url)
    yield d
    d.dispose()


# ----------------------------------------------------------------------------- hosts


def test_liveness_follows_heartbeats(database):
    with database.scope() as s:
        hosts.record_heartbeat(s, "h1", hosts.BACKUP_BINARY, "az1", now=T0)
        hosts.record_heartbeat(s, "h2", hosts.BACKUP_BINARY, "az1", now=T0)
        hosts.record_heartbeat(s, "h2", hosts.BACKUP_BINARY, "az1",
                               now=T0 + dt.timedelta(seconds=50))
    with database.scope() as s:
        live = [x.host for x in hosts.live_hosts(s, hosts.BACKUP_BINARY, az="az1",
                                                 now=T0 + dt.timedelta(seconds=61),
                                                 down_time=60)]
        assert live == ["h2"]
        assert hosts.select_host(s, hosts.BACKUP_BINARY, az="az1",
                                 now=T0 + dt.timedelta(seconds=61), down_time=60) == "h2"
        with pytest.raises(errors.NoLiveHost, match="az2"):
            hosts.select_host(s, hosts.BACKUP_BINARY, az="az2", now=T0, down_time=60)
        count = s.scalar(select(hosts.Service.report_count).where(hosts.Service.host == "h2"))
        assert count == 2


def test_disabled_hosts_and_use_same_host(database):
    with database.scope() as s:
        for h in ("h1", "h2", "h3"):
            hosts.record_heartbeat(s, h, hosts.BACKUP_BINARY, "nova", now=T0)
        s.execute(hosts.update(hosts.Service).where(hosts.Service.host == "h3")
                  .values(disabled=True))
    with database.scope() as s:
        rng = random.Random(1)
        picks = {hosts.select_host(s, hosts.BACKUP_BINARY, now=T0, down_time=60, rng=rng)
                 for _ in range(50)}
        assert picks == {"h1", "h2"}
        assert hosts.select_host(s, hosts.BACKUP_BINARY, now=T0, down_time=60,
                                 preferred="h2", use_same_host=True) == "h2"
        with pytest.raises(errors.NoLiveHost):
            hosts.select_host(s, hosts.BACKUP_BINARY, now=T0, down_time=60, preferred="h3",
                              use_same_host=True)


def test_stopped_host_is_down_at_once(database):
    with database.scope() as s:
        hosts.record_heartbeat(s, "h1", hosts.BACKUP_BINARY, "nova", now=T0)
        hosts.mark_stopped(s, "h1", [hosts.BACKUP_BINARY])
    with database.scope() as s, pytest.raises(errors.NoLiveHost):
        hosts.select_host(s, hosts.BACKUP_BINARY, now=T0, down_time=60)


# ----------------------------------------------------------------------------- jobs


def test_claim_is_exclusive_and_lease_can_be_lost(database):
    with database.scope() as s:
        job = jobs.create(s, "volume_create", resource_id="v" * 36,
                          host="h1", project_id="p", now=T0)
        job_id = job.id
    with database.scope() as s:
        first = jobs.claim(s, job_id, "w1", now=T0, ttl=30)
        assert first is not None and first.attempt == 1 and first.lease_owner == "w1"
    with database.scope() as s:
        assert jobs.claim(s, job_id, "w2", now=T0, ttl=30) is None  # duplicate delivery
        assert jobs.renew(s, job_id, "w2", now=T0, ttl=30) == (False, False)
        assert jobs.renew(s, job_id, "w1", now=T0, ttl=30) == (True, False)
    with database.scope() as s:
        expired = jobs.expired(s, now=T0 + dt.timedelta(seconds=31))
        assert [j.id for j in expired] == [job_id]
        assert jobs.finish(s, expired[0], "failed", now=T0, error="lease expired")
    with database.scope() as s:
        # The old owner comes back too late: it can neither renew nor finish.
        assert jobs.renew(s, job_id, "w1", now=T0, ttl=30)[0] is False
        job = s.get(jobs.Job, job_id)
        assert not jobs.finish(s, job, "succeeded", now=T0, owner="w1")
        assert s.get(jobs.Job, job_id).state == "failed"


def test_cancelled_job_cannot_be_claimed(database):
    with database.scope() as s:
        job = jobs.create(s, "volume_create", resource_id="v" * 36,
                          host="h1", project_id="p", now=T0)
        job.cancel_requested = True
        job_id = job.id
    with database.scope() as s:
        assert jobs.claim(s, job_id, "w1", now=T0, ttl=30) is None


@pytest.fixture(params=[True, False], ids=["returning", "no-returning"])
def returning(request, monkeypatch):
    """Both paths of claim/finish: UPDATE ... RETURNING, and the re-read fallback."""
    if not request.param:
        monkeypatch.setattr(job_rows, "returning", lambda session: False)
    return request.param


def test_claim_returns_the_fresh_row_even_over_a_stale_copy(database, returning):
    with database.scope() as s:
        job = jobs.create(s, "volume_create", resource_id="v" * 36,
                          host="h1", project_id="p", now=T0)
        job_id = job.id
    with database.scope() as s:
        stale = s.get(jobs.Job, job_id)  # already in the session, state queued
        claimed = jobs.claim(s, job_id, "w1", now=T0, ttl=30)
        assert claimed is stale
        assert (claimed.state, claimed.attempt, claimed.lease_owner, claimed.started_at) == \
            ("running", 1, "w1", T0)
        assert claimed.lease_expires_at == T0 + dt.timedelta(seconds=30)
        assert not s.dirty
    with database.scope() as s:
        assert jobs.claim(s, job_id, "w2", now=T0, ttl=30) is None


def test_finish_refreshes_next_job_id_chained_meanwhile(database, returning):
    """A force delete may chain a job after the worker read its job: finish returns the
    row's next_job_id, without a write of its own and whether the job is attached or not."""
    with database.scope() as s:
        job = jobs.create(s, "backup_create", resource_id="b" * 36,
                          host="h1", project_id="p", now=T0)
        job_id = job.id
    with database.scope() as s:
        mine = jobs.claim(s, job_id, "w1", now=T0, ttl=30)
    assert mine.next_job_id is None  # the detached copy the worker keeps while it runs
    with database.scope() as s:
        then = jobs.create(s, "backup_delete", resource_id="b" * 36,
                           host="h1", project_id="p", state="waiting", now=T0)
        then_id = then.id
        s.execute(update(jobs.Job).where(jobs.Job.id == job_id)
                  .values(cancel_requested=True, next_job_id=then_id))
    with database.scope() as s:
        assert jobs.finish(s, mine, "cancelled", now=T0, owner="w1") is True
        assert mine.next_job_id == then_id
        assert jobs.promote_next(s, mine, now=T0).id == then_id
    with database.scope() as s:
        assert s.get(jobs.Job, job_id).state == "cancelled"
    # Someone else already ended it: False, and the caller's copy is left as it was.
    late = jobs.Job(id=job_id, next_job_id=None)
    with database.scope() as s:
        assert jobs.finish(s, late, "failed", now=T0) is False
    assert late.next_job_id is None
    with database.scope() as s:  # attached and stale: refreshed, not dirtied
        attached = s.get(jobs.Job, then_id)
        assert attached.next_job_id is None
        s.execute(update(jobs.Job).where(jobs.Job.id == then_id).values(next_job_id=job_id)
                  .execution_options(synchronize_session=False))
        assert attached.next_job_id is None
        assert jobs.finish(s, attached, "failed", now=T0) is True
        assert attached.next_job_id == job_id and not s.dirty


# ----------------------------------------------------------------------------- quota


def test_quota_reserve_commit_rollback_and_messages(database, cfg):
    cfg.quota_backups = 2
    cfg.quota_backup_gigabytes = 10
    with database.scope() as s:
        quota.charge(s, "p", {"backups": 1, "backup_gigabytes": 4}, cfg, now=T0)
        held = quota.reserve(s, "p", {"backups": 1, "backup_gigabytes": 4}, cfg, now=T0)
    with database.scope() as s:
        assert quota.usage(s, "p")["backups"] == (1, 1)
        with pytest.raises(errors.OverQuota, match=r"BackupLimitExceeded: Maximum number of "
                                                   r"backups allowed \(2\) exceeded"):
            quota.charge(s, "p", {"backups": 1}, cfg, now=T0)
    with database.scope() as s:
        # gigabytes are checked (and reported) before backups, as in Cinder
        with pytest.raises(errors.OverQuota, match="Requested 3G, quota is 10G and 8G has been"):
            quota.charge(s, "p", {"backups": 1, "backup_gigabytes": 3}, cfg, now=T0)
    with database.scope() as s:
        quota.rollback(s, held, now=T0)
        quota.rollback(s, held, now=T0)  # a second rollback is a no-op
    with database.scope() as s:
        assert quota.usage(s, "p")["backups"] == (1, 0)
        assert quota.usage(s, "p")["backup_gigabytes"] == (4, 0)
        quota.release(s, "p", {"backups": 5, "backup_gigabytes": 1}, now=T0)
    with database.scope() as s:
        assert quota.usage(s, "p")["backups"] == (0, 0)  # never below zero


def test_unlimited_and_project_override(database, cfg):
    with database.scope() as s:
        quota.set_limits(s, "p", {"backups": -1}, cfg)
        for _ in range(cfg.quota_backups + 5):
            quota.charge(s, "p", {"backups": 1}, cfg, now=T0)
        with pytest.raises(errors.InvalidInput, match="must be equal or greater"):
            quota.set_limits(s, "p", {"backups": 3}, cfg)
        quota.reset_limits(s, "p")
        assert quota.get_limits(s, "p", cfg)["backups"] == cfg.quota_backups


def test_expired_reservations_are_released(database, cfg):
    with database.scope() as s:
        quota.reserve(s, "p", {"backups": 1}, cfg, now=T0, expire=10)
    with database.scope() as s:
        assert quota.expire_reservations(s, now=T0 + dt.timedelta(seconds=5)) == 0
        assert quota.expire_reservations(s, now=T0 + dt.timedelta(seconds=11)) == 1
    with database.scope() as s:
        assert quota.usage(s, "p")["backups"] == (0, 0)


def test_reconcile_repairs_drift(database, cfg):
    with database.scope() as s:
        # As the API does: charge first, then insert the row it counts.
        quota.charge(s, "p", {"backups": 1, "backup_gigabytes": 3}, cfg, now=T0)
        s.add(Backup(id="b" * 8 + "-0000-0000-0000-000000000000", user_id="u", project_id="p",
                     volume_id="v", status="available", size=3, created_at=T0))
    with database.scope() as s:
        s.execute(quota.update(QuotaUsage).where(QuotaUsage.resource == "backups")
                  .values(in_use=7))
    with database.scope() as s:
        drift = quota.reconcile(s, now=T0)
    assert drift == [{"project_id": "p", "resource": "backups", "in_use": 7, "actual": 1,
                      "reserved": 0, "held": 0}]
    with database.scope() as s:
        assert quota.usage(s, "p")["backups"] == (1, 0)
        assert quota.reconcile(s, now=T0) == []


def test_charge_after_the_counted_rows_on_first_use(database, cfg):
    """The API charges last (counted=True): a first-use recount must not count the new row twice."""
    def create(backup_id: str, size: int) -> None:
        with database.scope() as s:
            s.add(Backup(id=backup_id, user_id="u", project_id="p", volume_id="v",
                         status="creating", size=size, created_at=T0))
            s.flush()
            quota.charge(s, "p", {"backups": 1, "backup_gigabytes": size}, cfg, now=T0,
                         counted=True)
    # One backup exists from before the project's usage rows did.
    with database.scope() as s:
        s.add(Backup(id="a" * 8 + "-0000-0000-0000-000000000000", user_id="u", project_id="p",
                     volume_id="v", status="available", size=2, created_at=T0))
    create("b" * 8 + "-0000-0000-0000-000000000000", 3)  # first use: recount, then charge
    create("c" * 8 + "-0000-0000-0000-000000000000", 4)  # usual path: one UPDATE each
    with database.scope() as s:
        assert quota.usage(s, "p")["backups"] == (3, 0)
        assert quota.usage(s, "p")["backup_gigabytes"] == (9, 0)
        assert quota.reconcile(s, now=T0) == []
    # Over the limit: the whole transaction goes, the row it wrote included.
    with database.scope() as s:
        quota.set_limits(s, "p", {"backups": 3}, cfg)
    with pytest.raises(errors.OverQuota):
        create("d" * 8 + "-0000-0000-0000-000000000000", 1)
    with database.scope() as s:
        assert quota.usage(s, "p")["backups"] == (3, 0)
        assert s.get(Backup, "d" * 8 + "-0000-0000-0000-000000000000") is None


def test_refusal_on_first_use_reports_the_recounted_usage(database, cfg):
    """No usage row yet and the project already at its limit: refused, with the recount."""
    with database.scope() as s:
        s.add(Backup(id="a" * 8 + "-0000-0000-0000-000000000000", user_id="u", project_id="p",
                     volume_id="v", status="available", size=6, created_at=T0))
    cfg.quota_backups = 1
    cfg.quota_backup_gigabytes = 8
    with database.scope() as s:
        with pytest.raises(errors.OverQuota, match="Requested 3G, quota is 8G and 6G has been"):
            quota.charge(s, "p", {"backups": 1, "backup_gigabytes": 3}, cfg, now=T0)
    with database.scope() as s:
        with pytest.raises(errors.OverQuota, match=r"allowed \(1\) exceeded"):
            quota.charge(s, "p", {"backups": 1}, cfg, now=T0)
        assert quota.usage(s, "p")["backups"] == (1, 0)


# ----------------------------------------------------------------------------- paging


@hsettings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from([None, "a", "b", "c"]), st.integers(0, 3)),
                     min_size=0, max_size=25),
       key=st.sampled_from(["display_name", "size", "created_at"]),
       direction=st.sampled_from(["asc", "desc"]), page=st.integers(1, 7), as_rows=st.booleans())
def test_keyset_pages_cover_every_row_once_in_order(tmp_path_factory, rows, key, direction,
                                                    page, as_rows):
    """Any sort, any page size, ORM objects or plain rows (a NOT NULL sort key on rows takes
    the statement built once, with the marker's values bound)."""
    d = tmp_path_factory.mktemp("paging")
    url = f"sqlite:///{d / 'p.db'}"
    upgrade(url)
    database = Database(url)
    try:
        with database.scope() as s:
            for i, (name, size) in enumerate(rows):
                s.add(Backup(id=f"{i:08d}-0000-0000-0000-000000000000", user_id="u",
                             project_id="p", volume_id="v", status="available",
                             display_name=name, size=size,
                             created_at=T0 + dt.timedelta(seconds=size)))  # ties included
        seen = []
        marker = None
        with database.scope(write=False) as s:
            while True:
                items, _ = paging.list_rows(
                    s, Backup, scope_project="p", filters={}, like_filters={},
                    sort=[(key, direction)], sort_keys={"display_name", "size", "created_at"},
                    marker=marker, limit=page, offset=None, with_count=False, as_rows=as_rows)
                if not items:
                    break
                seen.extend(items)
                marker = items[-1].id
        assert sorted(b.id for b in seen) == sorted(f"{i:08d}-0000-0000-0000-000000000000"
                                                     for i in range(len(rows)))

        def sort_key(b):
            v = getattr(b, key)
            return (v is not None, v if v is not None else 0, b.id)
        expected = sorted(seen, key=sort_key, reverse=(direction == "desc"))
        assert [b.id for b in seen] == [b.id for b in expected]
    finally:
        database.dispose()


# ----------------------------------------------------------------------------- microversions


@pytest.mark.parametrize("header,expected", [
    (None, "3.0"), ("volume 3.9", "3.9"), ("volume latest", "3.71"),
    ("compute 2.1, volume 3.45", "3.45"), ("VOLUME 3.71", "3.71"),
])
def test_microversion_negotiation(header, expected):
    assert str(negotiate(header)) == expected


@pytest.mark.parametrize("header,exc", [
    ("volume 3.72", errors.NotAcceptable), ("volume 2.0", errors.NotAcceptable),
    ("volume 3.x", errors.InvalidInput), ("volume 3.07", errors.InvalidInput),
    ("compute 2.1", errors.InvalidInput), ("volume", errors.InvalidInput),
])
def test_microversion_errors(header, exc):
    with pytest.raises(exc):
        negotiate(header)


def test_settings_from_environment(tmp_path):
    s = Settings.from_env({"ORCH_STATE_DIR": str(tmp_path), "ORCH_API_PORT": "9999",
                           "ORCH_HEARTBEAT_INTERVAL": "5", "ORCH_BACKUP_USE_SAME_HOST": "yes"})
    assert s.api_port == 9999 and s.heartbeat_interval == 5.0 and s.backup_use_same_host
    assert s.database_url == f"sqlite:///{tmp_path}/orchestrator.db"
    assert s.broker_url == f"redis+socket://{tmp_path}/redis.sock"
    with pytest.raises(ValueError, match="ORCH_API_PORT"):
        Settings.from_env({"ORCH_API_PORT": "x"})
    assert Settings.from_env({"ORCH_HEARTBEAT_INTERVAL": "10",
                              "ORCH_SERVICE_DOWN_TIME": "5"}).service_down_time == 25.0
    assert utcnow().tzinfo is None
