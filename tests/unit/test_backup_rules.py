"""Rules of the backup API, one at a time, in process on SQLite (and PostgreSQL when it
answers): each test fails when its rule is broken."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy import update

from orchestrator import api
from orchestrator import errors
from orchestrator import hosts
from orchestrator import jobs
from orchestrator import volumes
from orchestrator.config import Settings
from orchestrator.context import RequestContext
from orchestrator.db import utcnow
from orchestrator.dispatch import dispatch
from orchestrator.migrate import upgrade
from orchestrator.models import Backup
from orchestrator.models import Job
from orchestrator.models import Snapshot
from orchestrator.models import Volume
from orchestrator.operations.backups import BackupCreate
from orchestrator.operations.backups import BackupCreateOutcome

DEMO = RequestContext("demo", "demo")
ADMIN = RequestContext("admin", "admin", is_admin=True, roles=("admin",))


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    url = request.getfixturevalue("postgres").url if request.param == "postgresql" else ""
    s = Settings(state_dir=str(tmp_path), broker_url="memory://", database_url=url)
    upgrade(s.database_url)
    return s


def _volume(database, status="available") -> str:
    with database.scope() as s:
        vol = Volume(project_id="demo", user_id="demo", host="node1", availability_zone="nova",
                     size=1, status=status, display_name="v", created_at=utcnow())
        s.add(vol)
        s.flush()
        return vol.id


def _create(database, settings, volume_id) -> tuple[str, str]:
    with database.scope() as s:
        backup, (job,) = api.create_backup(s, DEMO, settings, volume_id=volume_id, now=utcnow())
    return backup.id, job.id


def _succeed(database, job_id, incremental=False) -> None:
    with database.scope() as s:
        job = jobs.claim(s, job_id, "w1", now=utcnow(), ttl=60)
    with database.scope() as s:
        assert jobs.finish(s, job, "succeeded", now=utcnow(), owner="w1")
        BackupCreate().complete(s, job, BackupCreate().params(job), BackupCreateOutcome(
            container="c", prefix="p", object_count=1, stored_bytes=1, logical_bytes=1,
            incremental=incremental), now=utcnow())


def _reset(database, backup_id, status):
    with database.scope() as s:
        return api.reset_status(s, ADMIN, backup_id, status, now=utcnow())


def _get(database, model, ident):
    with database.scope(write=False) as s:
        return s.get(model, ident)


def test_reset_to_available_needs_complete_data(settings, database):
    volume_id = _volume(database)
    backup_id, job_id = _create(database, settings, volume_id)
    # While the create is queued (or running) its data is incomplete.
    with pytest.raises(errors.InvalidBackup, match="no complete data"):
        _reset(database, backup_id, "available")
    assert _get(database, Backup, backup_id).status == "creating"
    _reset(database, backup_id, "error")  # always allowed; cancels the queued create
    assert _get(database, Job, job_id).state == "cancelled"
    assert _get(database, Volume, volume_id).status == "available"  # the source is released
    with pytest.raises(errors.InvalidBackup, match="no complete data"):
        _reset(database, backup_id, "available")


def test_reset_to_available_after_a_good_create_clears_the_reason(settings, database):
    backup_id, job_id = _create(database, settings, _volume(database))
    _succeed(database, job_id)
    _reset(database, backup_id, "error")
    assert _get(database, Backup, backup_id).fail_reason == "reset to error by an administrator"
    _reset(database, backup_id, "available")
    backup = _get(database, Backup, backup_id)
    assert (backup.status, backup.fail_reason) == ("available", None)


def test_reset_after_a_started_delete_cannot_make_it_available(settings, database):
    backup_id, job_id = _create(database, settings, _volume(database))
    _succeed(database, job_id)
    with database.scope() as s:
        (delete,) = api.delete_backup(s, DEMO, settings, backup_id, now=utcnow())
    with database.scope() as s:
        jobs.claim(s, delete.id, "w1", now=utcnow(), ttl=60)  # it may have removed objects
    _reset(database, backup_id, "error")
    with pytest.raises(errors.InvalidBackup, match="no complete data"):
        _reset(database, backup_id, "available")


def test_reset_cancels_a_queued_restore(settings, database):
    """A queued restore must not run later into a volume the administrator released."""
    backup_id, job_id = _create(database, settings, _volume(database))
    _succeed(database, job_id)
    target = _volume(database)
    with database.scope() as s:
        _, (restore,) = api.restore_backup(s, DEMO, settings, backup_id, volume_id=target,
                                           name=None, now=utcnow())
    assert _get(database, Volume, target).status == "restoring-backup"
    _reset(database, backup_id, "available")
    assert _get(database, Job, restore.id).state == "cancelled"
    assert _get(database, Volume, target).status != "restoring-backup"
    with database.scope() as s:  # a late delivery of the restore finds nothing to claim
        assert jobs.claim(s, restore.id, "w1", now=utcnow(), ttl=60) is None


def test_reset_asks_a_running_job_to_stop(settings, database):
    backup_id, job_id = _create(database, settings, _volume(database))
    with database.scope() as s:
        jobs.claim(s, job_id, "w1", now=utcnow(), ttl=60)
    _reset(database, backup_id, "error")
    job = _get(database, Job, job_id)
    assert (job.state, job.cancel_requested) == ("running", True)


class _Down:
    def send(self, job):
        raise errors.BrokerUnavailable("down")


def test_broker_down_on_restore_to_a_new_volume_undoes_the_chain(settings, database):
    backup_id, job_id = _create(database, settings, _volume(database))
    _succeed(database, job_id)
    with database.scope() as s:
        info, to_send = api.restore_backup(s, DEMO, settings, backup_id, volume_id=None,
                                           name=None, now=utcnow())
    with pytest.raises(errors.BrokerUnavailable):
        dispatch(database, _Down(), to_send, undo_on_failure=True)
    assert _get(database, Backup, backup_id).status == "available"
    with database.scope(write=False) as s:
        states = {j.op: j.state for j in s.scalars(select(Job).where(
            Job.op.in_(("volume_create", "backup_restore"))))}
        assert states == {"volume_create": "cancelled", "backup_restore": "cancelled"}
        assert s.get(Volume, info["volume_id"]) is None


def _record(**fields) -> dict:
    import base64
    import json
    record = {"id": "0f0e0d0c-0b0a-4908-8706-050403020100", "size": 1, "container": "c",
              "service_metadata": "backup_x", **fields}
    record = {k: v for k, v in record.items() if v is not ...}
    return {"backup_service": "orchestrator.drivers.chunked",
            "backup_url": base64.b64encode(json.dumps(record).encode()).decode()}


@pytest.mark.parametrize("fields, needle", [
    ({"id": ...}, "missing an id"),
    ({"size": ...}, "missing size attribute"),
    ({"size": 2**40}, "size"),
    ({"size": -1}, "size"),
    ({"size": "1"}, "size"),
    ({"id": "not-a-uuid"}, "UUID"),
    ({"volume_id": "x" * 400}, "volume_id"),
    ({"display_name": "n" * 256}, "display_name"),
    ({"display_description": 5}, "display_description"),
    ({"object_count": -3}, "object_count"),
    ({"created_at": "yesterday"}, "parse"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"metadata": {"bad\n": "v"}}, "metadata"),
    ({"metadata": {f"k{i}": "v" for i in range(129)}}, "metadata"),
    ({"container": "../escape"}, "container"),
])
def test_import_validates_every_field_of_the_record(settings, database, fields, needle):
    with database.scope() as s, pytest.raises(errors.InvalidInput, match=needle):
        api.import_record(s, ADMIN, settings, now=utcnow(), **_record(**fields))
    with database.scope(write=False) as s:
        assert s.scalar(select(Backup.id)) is None
        assert s.scalar(select(Job.id)) is None


def test_import_parent_must_be_a_backup_of_the_importing_project(settings, database):
    other, job_id = _create(database, settings, _volume(database))  # project demo's
    _succeed(database, job_id)
    with database.scope() as s, pytest.raises(errors.InvalidInput, match="parent backup"):
        api.import_record(s, ADMIN, settings, now=utcnow(), **_record(parent_id=other))
    with database.scope() as s:  # the admin's own backups may be parents
        backup, _ = api.import_record(s, ADMIN, settings, now=utcnow(), **_record())
    assert _get(database, Backup, backup.id).status == "creating"


@given(st.text(alphabet="ab./-_\n\\ é", max_size=12) | st.sampled_from(
    ["a/", "/a", "a//b", "a/./b", "a/../b", "..", ".", "a\n", "a" * 256, "x" * 255]))
@settings_(max_examples=400, deadline=None)
def test_a_container_the_api_accepts_the_data_path_accepts(container):
    """Whatever the API takes, the worker's stores take (else a 202 that never ends)."""
    from workers.datapath import InvalidContainer
    from workers.datapath import validate_container as store_rule
    try:
        accepted = api.validate_container(container)
    except errors.InvalidInput:
        return
    if accepted is None:
        return
    try:
        store_rule(accepted)
    except InvalidContainer as exc:
        raise AssertionError(f"the API accepts {container!r}, the store does not: {exc}") from exc


def test_a_cascading_volume_delete_waits_for_a_snapshot_backup(settings, database):
    volume_id = _volume(database)
    with database.scope() as s:
        snap, _ = volumes.new_snapshot(s, DEMO, settings, volume_id=volume_id, name="s",
                                       description=None, force=False, metadata=None,
                                       now=utcnow())
        s.execute(update(Snapshot).where(Snapshot.id == snap.id).values(status="available"))
    with database.scope() as s:
        api.create_backup(s, DEMO, settings, volume_id=volume_id, snapshot_id=snap.id,
                          now=utcnow())
    with database.scope() as s, pytest.raises(errors.InvalidVolume, match="backing-up"):
        volumes.delete_volume(s, DEMO, settings, volume_id, cascade=True, now=utcnow())
    assert _get(database, Volume, volume_id).status == "available"
    assert _get(database, Snapshot, snap.id).status == "backing-up"


# ----------------------------------------------------------------------------- mutation probes
# Rules a probe could break without any fast test noticing: each test below fails when its
# rule is broken.


def _at(hour: int, minute: int):
    return utcnow().replace(year=2026, month=11, day=1, hour=hour, minute=minute, second=0,
                            microsecond=0)


def test_parent_choice_by_data_timestamp_with_a_snapshot(settings, database):
    """§7.1: backup at 08:00, snapshot at 08:10, backup at 08:20: the snapshot's incremental
    builds on 08:00 and carries 08:10; the volume's incremental builds on 08:20."""
    volume_id = _volume(database)
    first, job = _create(database, settings, volume_id)
    _succeed(database, job)
    second, job = _create(database, settings, volume_id)
    _succeed(database, job)
    with database.scope() as s:
        s.execute(update(Backup).where(Backup.id == first).values(data_timestamp=_at(8, 0),
                                                                  created_at=_at(8, 0)))
        s.execute(update(Backup).where(Backup.id == second).values(data_timestamp=_at(8, 20),
                                                                   created_at=_at(8, 20)))
        snap = Snapshot(project_id="demo", user_id="demo", volume_id=volume_id, size=1,
                        status="available", created_at=_at(8, 10), display_name="s")
        s.add(snap)
        s.flush()
        snapshot_id = snap.id
    with database.scope() as s:
        of_snapshot, _ = api.create_backup(s, DEMO, settings, volume_id=volume_id,
                                           snapshot_id=snapshot_id, incremental=True,
                                           now=utcnow())
    assert (of_snapshot.parent_id, of_snapshot.data_timestamp) == (first, _at(8, 10))
    with database.scope() as s:
        of_volume, _ = api.create_backup(s, DEMO, settings, volume_id=volume_id,
                                         incremental=True, force=True, now=utcnow())
    assert of_volume.parent_id == second


def test_a_soft_deleted_incremental_no_longer_blocks_its_parents_delete(settings, database):
    volume_id = _volume(database)
    parent, job = _create(database, settings, volume_id)
    _succeed(database, job)
    child, job = _create(database, settings, volume_id)
    with database.scope() as s:
        s.execute(update(Backup).where(Backup.id == child).values(parent_id=parent))
    with database.scope() as s, pytest.raises(errors.InvalidBackup, match="Incremental"):
        api.delete_backup(s, DEMO, settings, parent, now=utcnow())
    with database.scope() as s:
        s.execute(update(Backup).where(Backup.id == child).values(deleted=True,
                                                                  status="deleted"))
    with database.scope() as s:
        assert api.delete_backup(s, DEMO, settings, parent, now=utcnow())


def test_the_reaper_puts_an_in_use_volume_back_in_use(settings, database):
    from orchestrator import maintenance
    volume_id = _volume(database, status="in-use")
    with database.scope() as s:
        backup, (job,) = api.create_backup(s, DEMO, settings, volume_id=volume_id, force=True,
                                           now=utcnow())
    assert _get(database, Volume, volume_id).status == "backing-up"
    with database.scope() as s:  # a worker that claimed it and died: the lease ran out
        jobs.claim(s, job.id, "dead", now=utcnow().replace(year=2020), ttl=1)
    assert maintenance.reap(settings, publisher=None)["failed"] == 1
    assert _get(database, Volume, volume_id).status == "in-use"
    assert _get(database, Backup, backup.id).status == "error"


def test_a_late_completion_never_overwrites_a_reset(settings, database):
    backup_id, job_id = _create(database, settings, _volume(database))
    with database.scope() as s:
        job = jobs.claim(s, job_id, "w1", now=utcnow(), ttl=60)
    _reset(database, backup_id, "error")
    with database.scope() as s:  # the worker had not seen the cancellation yet
        assert jobs.finish(s, job, "succeeded", now=utcnow(), owner="w1")
        BackupCreate().complete(s, job, BackupCreate().params(job), BackupCreateOutcome(
            container="c", prefix="p", object_count=1, stored_bytes=1, logical_bytes=1,
            incremental=False), now=utcnow())
    assert _get(database, Backup, backup_id).status == "error"


def test_a_host_is_up_exactly_while_its_heartbeat_is_younger_than_the_down_time(database):
    import datetime as dt
    now = utcnow()
    service = hosts.Service(host="h", binary=hosts.BACKUP_BINARY, availability_zone="nova",
                            updated_at=now - dt.timedelta(seconds=60))
    assert hosts.is_up(service, now=now, down_time=60)
    assert not hosts.is_up(service, now=now + dt.timedelta(seconds=1), down_time=60)
    service.updated_at = None
    assert not hosts.is_up(service, now=now, down_time=60)


def test_a_token_with_reader_and_member_may_write():
    from orchestrator import policy
    both = RequestContext("u", "p", roles=("reader", "member"))
    reader = RequestContext("u", "p", roles=("reader",))
    assert policy.allowed(both, "backup:create") and both.can_write()
    assert not policy.allowed(reader, "backup:create") and not reader.can_write()
    assert policy.allowed(reader, "backup:get")
    with pytest.raises(errors.PolicyNotAuthorized):
        policy.authorize_method(reader, "POST", "/v3/backups")
    policy.authorize_method(both, "POST", "/v3/backups")


@pytest.mark.parametrize("data_format, delete_any, any_backup, outcome", [
    (2, False, False, "cinder"),      # Cinder's rule by default, whatever the format
    (2, True, False, "queued"),       # ORCH_BACKUP_DELETE_ANY
    (2, False, True, "queued"),       # retention deletes any, whatever the setting
    (None, True, False, "chain"),     # the chain format keeps the rule, and says why
    (None, False, True, "chain"),
])
def test_deleting_a_backup_with_dependents(settings, database, data_format, delete_any,
                                           any_backup, outcome):
    settings.backup_delete_any = delete_any
    vol = _volume(database)
    parent, job = _create(database, settings, vol)
    _succeed(database, job)
    with database.scope() as s:
        child, (child_job,) = api.create_backup(s, DEMO, settings, volume_id=vol,
                                                incremental=True, now=utcnow())
    _succeed(database, child_job.id, incremental=True)
    with database.scope() as s:
        s.execute(update(Backup).where(Backup.id.in_((parent, child.id)))
                  .values(data_format=data_format))
    with database.scope() as s:
        if outcome == "queued":
            (delete_job,) = api.delete_backup(s, DEMO, settings, parent, now=utcnow(),
                                              any_backup=any_backup)
            assert delete_job.op == "backup_delete"
            return
        with pytest.raises(errors.InvalidBackup) as raised:
            api.delete_backup(s, DEMO, settings, parent, now=utcnow(), any_backup=any_backup)
    message = "Invalid backup: Incremental backups exist for this backup."
    if outcome == "cinder":
        assert str(raised.value) == message
    else:
        assert str(raised.value).startswith(message) and "chain format" in str(raised.value)
    with database.scope(write=False) as s:
        assert s.get(Backup, parent).status == "available"
