"""Where the service once differed from Cinder by accident: each rule through
python-cinderclient, as a tenant's tools see it."""
from __future__ import annotations

import base64
import json
import uuid

import pytest
from cinderclient import client as cinder_client
from cinderclient import exceptions
from cinderclient.contrib import noauth
from keystoneauth1 import session as ksa_session
from sqlalchemy import update

from orchestrator import hosts
from orchestrator import quota
from orchestrator.db import utcnow
from orchestrator.models import Backup
from orchestrator.models import Service
from orchestrator.models import Volume


@pytest.fixture(scope="module")
def stack(stacks):
    return stacks("noauth")


def cinder(stack, project: str, user: str | None = None):
    auth = noauth.CinderNoAuthPlugin(user_id=user or f"u-{project}", project_id=project,
                                     endpoint=stack.endpoint)
    return cinder_client.Client("3.71", session=ksa_session.Session(auth=auth, timeout=60),
                                os_endpoint=stack.endpoint)


def _volume(stack, project: str, **values) -> str:
    """A volume row of ``project`` on the stack's node (no image needed by these rules)."""
    with stack.db.scope() as s:
        vol = Volume(project_id=project, user_id="u", host="wire-noauth",
                     availability_zone="nova", size=1, display_name="v", created_at=utcnow(),
                     status="available", **values)
        s.add(vol)
        s.flush()
        return vol.id


def _backup(stack, project: str, volume_id: str, **values) -> str:
    with stack.db.scope() as s:
        row = Backup(**{"project_id": project, "user_id": "u", "volume_id": volume_id,
                        "size": 1, "availability_zone": "nova", "host": "wire-noauth",
                        "container": "c", "service_metadata": "p",
                        "service": "orchestrator.drivers.chunked", "created_at": utcnow(),
                        "data_timestamp": utcnow(), "object_count": 1,
                        "num_dependent_backups": 0, "deleted": False, "status": "available",
                        **values})
        s.add(row)
        s.flush()
        return row.id


@pytest.fixture
def no_backup_host(stack):
    """Every cinder-backup service looks down for the length of the test."""
    with stack.db.scope() as s:
        s.execute(update(Service).where(Service.binary == hosts.BACKUP_BINARY)
                  .values(disabled=True))
    yield
    with stack.db.scope() as s:
        s.execute(update(Service).where(Service.binary == hosts.BACKUP_BINARY)
                  .values(disabled=False))


def test_delete_and_restore_with_no_backup_host_are_404(stack, no_backup_host):
    c = cinder(stack, "p-nohost")
    backup_id = _backup(stack, "p-nohost", _volume(stack, "p-nohost"))
    target = _volume(stack, "p-nohost")
    for attempt in (lambda: c.backups.delete(backup_id),
                    lambda: c.restores.restore(backup_id, target)):
        with pytest.raises(exceptions.NotFound) as err:
            attempt()
        assert "Service cinder-backup could not be found." in str(err.value)
    assert c.backups.get(backup_id).status == "available"
    assert c.volumes.get(target).status == "available"


def test_restore_checks_the_target_before_the_host(stack, no_backup_host):
    c = cinder(stack, "p-target")
    backup_id = _backup(stack, "p-target", _volume(stack, "p-target"))
    busy = _volume(stack, "p-target")
    with stack.db.scope() as s:
        s.execute(update(Volume).where(Volume.id == busy).values(status="in-use"))
    with pytest.raises(exceptions.BadRequest, match="must be available"):
        c.restores.restore(backup_id, busy)


def test_no_eligible_parent_is_no_backups_available(stack):
    c = cinder(stack, "p-parent")
    volume_id = _volume(stack, "p-parent")
    _backup(stack, "p-parent", volume_id, status="error")  # a candidate, not eligible
    with pytest.raises(exceptions.BadRequest,
                       match=r"No backups available to do an incremental backup\."):
        c.backups.create(volume_id, incremental=True)
    assert c.volumes.get(volume_id).status == "available"


def test_quota_is_checked_before_the_parent(stack):
    c = cinder(stack, "p-quota")
    volume_id = _volume(stack, "p-quota")
    with stack.db.scope() as s:
        quota.set_limits(s, "p-quota", {"backups": 0}, stack.settings)
    with pytest.raises(exceptions.OverLimit, match="BackupLimitExceeded"):
        c.backups.create(volume_id, incremental=True)


def test_import_of_a_record_without_id_or_size_is_invalid_input(stack):
    admin = cinder(stack, "admin", "admin")
    for record, needle in (({"size": 1}, "missing an id"),
                           ({"id": str(uuid.uuid4())}, "missing size attribute")):
        url = base64.b64encode(json.dumps(record).encode()).decode()
        with pytest.raises(exceptions.BadRequest, match=needle) as err:
            admin.backups.import_record("orchestrator.drivers.chunked", url)
        assert "Invalid input received" in str(err.value)


def test_metadata_null_on_update_is_refused(stack):
    c = cinder(stack, "p-meta")
    backup_id = _backup(stack, "p-meta", _volume(stack, "p-meta"))
    with pytest.raises(exceptions.BadRequest, match="metadata"):
        c.backups.update(backup_id, metadata=None)


def test_an_unknown_zone_is_a_400(stack):
    c = cinder(stack, "p-zone")
    volume_id = _volume(stack, "p-zone")
    with pytest.raises(exceptions.BadRequest, match=r"Availability zone 'atlantis' is invalid\."):
        c.backups.create(volume_id, availability_zone="atlantis")
    with pytest.raises(exceptions.BadRequest, match=r"Availability zone 'atlantis' is invalid\."):
        c.volumes.create(1, availability_zone="atlantis")
    assert c.volumes.get(volume_id).status == "available"


def test_a_restore_to_a_new_volume_goes_to_the_default_zone(stack):
    c = cinder(stack, "p-az")
    backup_id = _backup(stack, "p-az", _volume(stack, "p-az"), availability_zone="az-far")
    with stack.db.scope() as s:  # a live backup host in the backup's zone
        hosts.record_heartbeat(s, "far-node", [hosts.BACKUP_BINARY], zone="az-far",
                               now=utcnow())
    restore = c.restores.restore(backup_id)
    assert c.volumes.get(restore.volume_id).availability_zone == \
        stack.settings.default_availability_zone
