"""The tick, runs and prunes in process on real SQL (SQLite, and PostgreSQL when it answers)
with the real dispatch path into a real Redis: each due time runs once, through the
create rules, and prune deletes through the delete path."""
from __future__ import annotations

import datetime as dt
import threading

import pytest
import redis
from orch_testlib import make_settings
from sqlalchemy import select
from sqlalchemy import update

from orchestrator import hosts
from orchestrator.context import RequestContext
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.dispatch import Publisher
from orchestrator.migrate import upgrade
from orchestrator.models import Backup
from orchestrator.models import BackupPolicy
from orchestrator.models import BackupPolicyRun
from orchestrator.models import Job
from orchestrator.models import Service
from orchestrator.models import Volume
from orchestrator.policies import service
from orchestrator.tasks import make_celery

DEMO = RequestContext("demo", "demo", roles=("member",))


@pytest.fixture(params=["sqlite", "postgresql"])
def psettings(request, tmp_path, redis_server):
    url = f"redis://127.0.0.1:{redis_server.port}/3"
    redis.Redis.from_url(url).flushdb()
    extra = {}
    if request.param == "postgresql":
        extra["database_url"] = request.getfixturevalue("postgres").url
    s = make_settings(tmp_path / "state", url, quota_backups=-1, quota_backup_gigabytes=-1,
                      **extra)
    upgrade(s.database_url)
    return s


@pytest.fixture
def pdb(psettings):
    d = get_database(psettings.database_url)
    with d.scope() as s:
        hosts.record_heartbeat(s, "node1", [hosts.BACKUP_BINARY, hosts.VOLUME_BINARY],
                               zone="nova", now=utcnow())
    return d


@pytest.fixture
def publisher(psettings):
    return Publisher(make_celery(psettings))


def _volumes(db, n, status="available", project="demo", metadata=None) -> list[str]:
    ids = []
    with db.scope() as s:
        for _ in range(n):
            vol = Volume(project_id=project, user_id="demo", host="node1",
                         availability_zone="nova", size=1, status=status, display_name="v",
                         created_at=utcnow(), metadata_=metadata or {})
            s.add(vol)
            s.flush()
            ids.append(vol.id)
    return ids


def _policy(db, body: dict, due_in: float = -1.0) -> str:
    with db.scope() as s:
        p = service.create_policy(s, DEMO, body, now=utcnow())
        p.next_run_at = utcnow() + dt.timedelta(seconds=due_in)
        return p.id


def _runs(db, policy_id) -> list[BackupPolicyRun]:
    with db.scope(write=False) as s:
        return list(s.scalars(select(BackupPolicyRun).where(
            BackupPolicyRun.policy_id == policy_id).order_by(BackupPolicyRun.due_at)))


def _backups(db, policy_id) -> list[Backup]:
    with db.scope(write=False) as s:
        return list(s.scalars(select(Backup).where(Backup.policy_id == policy_id,
                                                   Backup.deleted.is_(False))
                              .order_by(Backup.created_at)))


def _finish_all(db) -> None:
    """Every queued backup create done: backups available, volumes back, jobs succeeded."""
    with db.scope() as s:
        s.execute(update(Backup).where(Backup.status == "creating").values(status="available"))
        s.execute(update(Volume).where(Volume.status == "backing-up")
                  .values(status="available"))
        s.execute(update(Job).where(Job.state.in_(("queued", "running")))
                  .values(state="succeeded", finished_at=utcnow()))


def test_a_due_policy_runs_through_the_create_rules_once(psettings, pdb, publisher):
    ok, attached = _volumes(pdb, 1), _volumes(pdb, 1, status="in-use")
    broken = _volumes(pdb, 1, status="error")
    pid = _policy(pdb, {"schedule": {"interval_seconds": 60},
                        "volume_ids": ok + attached + broken})
    with pdb.scope(write=False) as s:
        due = s.get(BackupPolicy, pid).next_run_at
    counts = service.tick(psettings, publisher=publisher)
    assert counts["scheduled"] == 1
    (run,) = _runs(pdb, pid)
    assert run.kind == "scheduled" and run.due_at == due
    assert set(run.backup_ids) == {ok[0], attached[0]}  # in-use: the policy forces
    assert "must be available or in-use" in run.errors[broken[0]]
    backups = _backups(pdb, pid)
    assert {b.volume_id for b in backups} == {ok[0], attached[0]}
    assert all(b.status == "creating" and b.policy_id == pid for b in backups)
    with pdb.scope(write=False) as s:
        jobs = s.scalars(select(Job).where(Job.resource_id.in_([b.id for b in backups]))).all()
        assert {j.op for j in jobs} == {"backup_create"} and len(jobs) == 2
        assert s.get(Volume, ok[0]).status == "backing-up"
        policy = s.get(BackupPolicy, pid)
        assert policy.next_run_at == due + dt.timedelta(seconds=60)
        assert policy.last_run_at is not None
    queue = redis.Redis.from_url(psettings.broker_url)
    assert queue.llen(jobs[0].queue) == 2  # published by the real dispatch path
    assert service.tick(psettings, publisher=publisher)["due"] == 0  # nothing due now


def test_racing_ticks_claim_a_due_time_exactly_once(psettings, pdb):
    vols = _volumes(pdb, 5)
    pid = _policy(pdb, {"schedule": {"interval_seconds": 3600}, "volume_ids": vols})
    with pdb.scope(write=False) as s:
        due = s.get(BackupPolicy, pid).next_run_at
    outcomes, start = [], threading.Barrier(4)

    def racer():
        start.wait()
        outcomes.append(service.claim_and_run(pdb, psettings, pid, due)[0])

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(1 for o in outcomes if o is not None) == 1, outcomes
    assert len(_runs(pdb, pid)) == 1 and len(_backups(pdb, pid)) == 5


def test_a_run_past_its_window_is_missed_or_run_late(psettings, pdb, publisher):
    vols = _volumes(pdb, 1)
    skip = _policy(pdb, {"schedule": {"interval_seconds": 30}, "volume_ids": vols,
                         "start_window_seconds": 10, "run_missed": False}, due_in=-100)
    service.tick(psettings, publisher=publisher)
    (run,) = _runs(pdb, skip)
    assert run.kind == "missed" and not run.backup_ids and "start window of 10 s" in run.reason
    assert run.coalesced == 3  # due times at -70, -40 and -10 s had passed too
    with pdb.scope(write=False) as s:
        policy = s.get(BackupPolicy, skip)
        assert policy.missed_runs == 4 and policy.next_run_at > utcnow()
    late = _policy(pdb, {"schedule": {"interval_seconds": 30}, "volume_ids": vols,
                         "start_window_seconds": 10, "run_missed": True}, due_in=-100)
    service.tick(psettings, publisher=publisher)
    (run,) = _runs(pdb, late)
    assert run.kind == "late" and set(run.backup_ids) == set(vols)


def test_with_no_live_host_the_due_run_waits_and_says_why(psettings, pdb, publisher):
    vols = _volumes(pdb, 2)
    pid = _policy(pdb, {"schedule": {"interval_seconds": 600}, "volume_ids": vols})
    with pdb.scope() as s:
        s.execute(update(Service).values(updated_at=utcnow() - dt.timedelta(hours=1)))
        due = s.get(BackupPolicy, pid).next_run_at
    assert service.tick(psettings, publisher=publisher)["waiting"] == 1
    with pdb.scope(write=False) as s:
        policy = s.get(BackupPolicy, pid)
        assert policy.next_run_at == due and "could not be found" in policy.last_error
        assert s.get(Volume, vols[0]).status == "available"  # nothing half-done
    assert not _runs(pdb, pid) and not _backups(pdb, pid)
    with pdb.scope() as s:
        hosts.record_heartbeat(s, "node1", [hosts.BACKUP_BINARY], zone="nova", now=utcnow())
    assert service.tick(psettings, publisher=publisher)["scheduled"] == 1
    assert len(_backups(pdb, pid)) == 2


def test_scheduled_backups_are_charged_to_the_project_quota(psettings, pdb, publisher):
    psettings.quota_backups = 1
    vols = _volumes(pdb, 2)
    pid = _policy(pdb, {"schedule": {"interval_seconds": 600}, "volume_ids": vols})
    service.tick(psettings, publisher=publisher)
    (run,) = _runs(pdb, pid)
    assert len(run.backup_ids) == 1 and len(run.errors) == 1
    assert "exceeded" in next(iter(run.errors.values())).lower()


def test_full_every_makes_every_third_backup_full(psettings, pdb, publisher):
    vols = _volumes(pdb, 1)
    pid = _policy(pdb, {"schedule": {"interval_seconds": 600}, "volume_ids": vols,
                        "full_every": 3})
    kinds = []
    for _ in range(5):
        with pdb.scope() as s:
            policy = s.get(BackupPolicy, pid)
            run, _ = service.run_policy(s, psettings, policy, now=utcnow(), due_at=utcnow(),
                                        kind="manual")
            backup = s.get(Backup, run.backup_ids[vols[0]])
            kinds.append("I" if backup.parent_id else "F")
        _finish_all(pdb)
    assert kinds == ["F", "I", "I", "F", "I"]


def test_metadata_selector_picks_matching_volumes_of_the_project(psettings, pdb):
    gold = _volumes(pdb, 2, metadata={"tier": "gold"})
    _volumes(pdb, 1, metadata={"tier": "bronze"})
    _volumes(pdb, 1, metadata={"tier": "gold"}, project="other")
    pid = _policy(pdb, {"schedule": {"interval_seconds": 600},
                        "volume_metadata": {"tier": "gold"}})
    with pdb.scope() as s:
        chosen, missing = service.select_volumes(s, s.get(BackupPolicy, pid))
    assert sorted(chosen) == sorted(gold) and not missing


def test_prune_deletes_through_the_delete_path_child_first(psettings, pdb, publisher):
    vols = _volumes(pdb, 1)
    pid = _policy(pdb, {"schedule": {"interval_seconds": 600}, "volume_ids": vols,
                        "full_every": 10, "retention": {"keep_last": 1}})
    for _ in range(3):  # F, I, I: a chain
        with pdb.scope() as s:
            service.run_policy(s, psettings, s.get(BackupPolicy, pid), now=utcnow(),
                               due_at=utcnow(), kind="manual")
        _finish_all(pdb)
    with pdb.scope() as s:  # a fourth, full: the chain is no longer needed
        s.get(BackupPolicy, pid).full_every = 1
        service.run_policy(s, psettings, s.get(BackupPolicy, pid), now=utcnow(),
                           due_at=utcnow(), kind="manual")
    _finish_all(pdb)
    full, inc1, inc2, newest = _backups(pdb, pid)
    assert inc2.parent_id == inc1.id and inc1.parent_id == full.id and newest.parent_id is None
    with pdb.scope() as s:
        plan, jobs = service.prune_policy(s, psettings, s.get(BackupPolicy, pid),
                                          now=utcnow(), dry_run=True)
    assert not jobs and [e["backup_id"] for e in plan["delete"]] == [inc2.id, inc1.id, full.id]
    assert plan["keep"] == [{"backup_id": newest.id, "volume_id": vols[0],
                             "rules": ["keep_last", "newest_available"]}]
    assert all(b.status == "available" for b in _backups(pdb, pid))  # a dry run deletes none
    with pdb.scope() as s:
        result, jobs = service.prune_policy(s, psettings, s.get(BackupPolicy, pid),
                                            now=utcnow(), dry_run=False)
    # The normal delete path refuses a parent while its child exists: the newest of the
    # chain goes now, the rest at the next prunes, once their dependents are gone.
    assert [j.op for j in jobs] == ["backup_delete"]
    assert [e.get("deferred", False) for e in result["delete"]] == [False, True, True]
    with pdb.scope(write=False) as s:
        assert s.get(Backup, inc2.id).status == "deleting"
        assert s.get(Backup, full.id).status == "available"
        assert s.get(Backup, newest.id).kept_by == ["keep_last", "newest_available"]
        assert s.get(BackupPolicy, pid).last_prune["deleted"] == 1


def test_the_next_prunes_finish_a_chain_once_its_dependents_are_gone(psettings, pdb):
    vols = _volumes(pdb, 1)
    pid = _policy(pdb, {"schedule": {"interval_seconds": 600}, "volume_ids": vols,
                        "full_every": 10, "retention": {"keep_last": 1}})
    for full_every in (10, 10, 1):  # F, I, then a new F
        with pdb.scope() as s:
            s.get(BackupPolicy, pid).full_every = full_every
            service.run_policy(s, psettings, s.get(BackupPolicy, pid), now=utcnow(),
                               due_at=utcnow(), kind="manual")
        _finish_all(pdb)
    full, inc, newest = _backups(pdb, pid)

    def prune():
        with pdb.scope() as s:
            return service.prune_policy(s, psettings, s.get(BackupPolicy, pid), now=utcnow(),
                                        dry_run=False)[0]

    first = prune()
    assert [(e["backup_id"], e.get("deferred", False)) for e in first["delete"]] == \
        [(inc.id, False), (full.id, True)]
    second = prune()  # the child's delete has not run yet: the parent still waits
    assert [(e["backup_id"], e.get("deferred", False)) for e in second["delete"]] == \
        [(full.id, True)] and not second["errors"]
    with pdb.scope() as s:  # the child's delete job completes
        s.execute(update(Backup).where(Backup.id == inc.id).values(deleted=True,
                                                                   status="deleted"))
    third = prune()
    assert [(e["backup_id"], e.get("deferred", False)) for e in third["delete"]] == \
        [(full.id, False)]
    assert [b.id for b in _backups(pdb, pid) if b.status == "available"] == [newest.id]


def test_one_tick_runs_every_due_policy_once_on_its_threads(psettings, pdb, publisher):
    psettings.policy_tick_threads = 3
    pids = [_policy(pdb, {"schedule": {"interval_seconds": 600},
                          "volume_ids": _volumes(pdb, 2), "retention": {"keep_last": 1}})
            for _ in range(6)]
    counts = service.tick(psettings, publisher=publisher)
    assert counts["due"] == 6 and counts["scheduled"] == 6, counts
    for pid in pids:
        (run,) = _runs(pdb, pid)
        assert len(run.backup_ids) == 2 and not run.errors
        with pdb.scope(write=False) as s:
            assert s.get(BackupPolicy, pid).last_prune is not None  # pruned after the run
    with pdb.scope(write=False) as s:
        jobs = s.scalars(select(Job).where(Job.op == "backup_create")).all()
    queue = redis.Redis.from_url(psettings.broker_url)
    assert len(jobs) == 12 and queue.llen(jobs[0].queue) == 12  # every job published
