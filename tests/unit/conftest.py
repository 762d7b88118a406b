"""Fixtures of the in-process unit tests."""
from __future__ import annotations

import pytest

from orchestrator import db as dbmod
from orchestrator import hosts
from orchestrator.db import utcnow


@pytest.fixture
def database(settings):
    """The ``settings`` fixture's database, with one live node (node1, zone nova)."""
    d = dbmod.get_database(settings.database_url)
    with d.scope() as s:
        hosts.record_heartbeat(s, "node1", [hosts.BACKUP_BINARY, hosts.VOLUME_BINARY],
                               zone="nova", now=utcnow())
    yield d
    dbmod._databases.pop(settings.database_url, None)
    d.dispose()
