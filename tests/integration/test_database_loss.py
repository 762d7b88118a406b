"""The database drops every connection (restart, failover): never a 500, and service resumes.

PostgreSQL only: the API's pooled connections are killed server-side with
pg_terminate_backend, as a restart would.
"""
from __future__ import annotations

import pytest
from orch_testlib import ApiServer
from orch_testlib import Client
from orch_testlib import ThrowawayPostgres
from orch_testlib import make_settings

from orchestrator import db as db_module
from orchestrator.migrate import upgrade


@pytest.fixture
def pg_api(tmp_path, redis_server, postgres):
    settings = make_settings(tmp_path / "state", f"{redis_server.url[:-1]}3",
                             database_url=postgres.url)
    upgrade(settings.database_url)
    server = ApiServer(settings).start()
    try:
        yield postgres, Client(server.url)
    finally:
        server.stop()


def _kill_connections(pg: ThrowawayPostgres) -> int:
    import psycopg
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()",
                            (pg.name,)).fetchall()
    return len(rows)


def _warm(client: Client) -> None:
    for _ in range(3):
        assert client.get("/backups/detail").status_code == 200
        assert client.get("/volumes").status_code == 200


def test_dropped_connections_give_503_then_recover(pg_api, monkeypatch):
    pg, client = pg_api
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_S", 3600.0)  # no ping: the query fails
    _warm(client)
    assert _kill_connections(pg) >= 1
    codes = [client.get("/backups/detail").status_code for _ in range(6)]
    assert set(codes) <= {200, 503}, codes
    assert codes[-1] == 200, codes
    r = client.get("/backups/detail")
    assert r.status_code == 200
    # A write after the loss works too (its connection came fresh from the pool).
    admin = Client(client.base, token="admin:admin")
    r = admin.put("/os-quota-sets/demo", json={"quota_set": {"backups": 7}})
    assert r.status_code == 200, r.text
    assert client.get("/os-quota-sets/demo").json()["quota_set"]["backups"] == 7


def test_idle_connections_are_pinged_and_replaced(pg_api, monkeypatch):
    pg, client = pg_api
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_S", 0.0)  # every checkout counts as idle
    _warm(client)
    assert _kill_connections(pg) >= 1
    codes = [client.get("/backups/detail").status_code for _ in range(4)]
    assert codes == [200] * 4  # the ping found the dead connection before any query used it


def test_503_fault_body(pg_api, monkeypatch):
    pg, client = pg_api
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_S", 3600.0)
    _warm(client)
    _kill_connections(pg)
    replies = [client.get("/backups/detail") for _ in range(4)]
    failed = [r for r in replies if r.status_code != 200]
    assert failed, "no request met the dropped connection"
    body = failed[0].json()
    assert body["serviceUnavailable"]["code"] == 503
    assert "database is unavailable" in body["serviceUnavailable"]["message"]
    assert failed[0].headers.get("Retry-After") == "1"
