"""The backup read model: a page with its metadata in one query, right per backup, on both
databases."""
from __future__ import annotations

import contextlib

from sqlalchemy import event

from orchestrator import api
from orchestrator.context import RequestContext
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.migrate import upgrade
from orchestrator.models import Backup
from orchestrator.models import BackupMetadata
from orchestrator.models import new_id


def _check(url: str) -> None:
    upgrade(url)
    db = get_database(url)
    now = utcnow()
    ids = []
    with db.scope() as s:
        for i in range(7):
            b = Backup(id=new_id(), user_id="u", project_id="p1", volume_id=new_id(),
                       status="available", size=1, created_at=now, display_name=f"b{i}")
            s.add(b)
            ids.append(b.id)
        s.flush()
        for i, bid in enumerate(ids[:5]):
            for k in range(i % 3):
                s.add(BackupMetadata(backup_id=bid, key=f"k{k}", value=f"{bid[:4]}-{k}",
                                     created_at=now))
        # Text that JSON must escape survives the aggregation as it was written.
        s.add(BackupMetadata(backup_id=ids[5], key='quote"back\\slash', value="ünï\n{}",
                             created_at=now))
        # A deleted item and another project's backup with metadata stay out.
        s.add(BackupMetadata(backup_id=ids[1], key="gone", value="x", created_at=now,
                             deleted=True))
        other = Backup(id=new_id(), user_id="u", project_id="p2", volume_id=new_id(),
                       status="available", size=1, created_at=now)
        s.add(other)
        s.flush()
        s.add(BackupMetadata(backup_id=other.id, key="k", value="v", created_at=now))
    ctx = RequestContext(user_id="u", project_id="p1")
    page = dict(sort=None, marker=None, filters=None, like_filters=None, offset=None,
                with_count=False)
    expected = {bid: {f"k{k}": f"{bid[:4]}-{k}" for k in range(i % 3)}
                for i, bid in enumerate(ids[:5])}
    expected[ids[5]] = {'quote"back\\slash': "ünï\n{}"}
    expected = {bid: expected.get(bid, {}) for bid in ids}
    with db.engine.connect() as conn, _statements(db.engine) as sent:
        rows, metadata, count = api.backup_view_rows(conn, ctx, with_metadata=True, limit=100,
                                                     **page)
        assert len(sent) == 1  # the page and its metadata: one round trip
        assert count is None
        assert sorted(r.id for r in rows) == sorted(ids)
        assert metadata == expected
        for bid in ids:  # the one-backup read (show) agrees, in one statement too
            del sent[:]
            row, meta = api.backup_view_row(conn, ctx, bid, with_metadata=True)
            assert len(sent) == 1
            assert row.id == bid
            assert meta == expected[bid]
        # Without metadata (before microversion 3.43) nothing is aggregated.
        _, none, _ = api.backup_view_rows(conn, ctx, with_metadata=False, limit=100, **page)
        assert none == {}
        assert api.backup_view_row(conn, ctx, ids[1], with_metadata=False)[1] == {}
    with db.session(write=False) as session:  # an ORM session works as well as a connection
        assert api.backup_view_rows(session, ctx, with_metadata=True, limit=100,
                                    **page)[1] == expected


@contextlib.contextmanager
def _statements(engine):
    sent: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        sent.append(statement)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_page_metadata_on_sqlite(tmp_path):
    _check(f"sqlite:///{tmp_path / 'r.db'}")


def test_page_metadata_on_postgres(postgres):
    _check(postgres.url)


def test_list_page_is_planned_once_on_postgres(postgres):
    """PostgreSQL keeps one generic plan for the dashboard's page however big the table.

    psycopg prepares a statement on its fifth run; PostgreSQL then compares the
    generic plan with the custom ones. With the LIMIT a parameter the generic plan
    reckons on a tenth of the rows, which on a table of many pages looks dearer
    than any custom plan, and every request was planned again (a million-row list
    cost 0.2 ms more PostgreSQL CPU per request than a thousand-row one).
    """
    from sqlalchemy import insert
    from sqlalchemy import text

    upgrade(postgres.url)
    db = get_database(postgres.url)
    now = utcnow()
    with db.scope() as s:
        s.execute(insert(Backup), [
            {"id": new_id(), "user_id": "u", "project_id": "p1", "volume_id": "v",
             "status": "available", "size": 1, "created_at": now, "display_name": f"b{i}"}
            for i in range(5000)])
    with db.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE backups")
    ctx = RequestContext(user_id="u", project_id="p1")
    # The dashboard's page (a statement built once) and a filtered, sorted page with an
    # offset (built per request).
    for order, extra in (("created_at", {}),
                         ("display_name", {"filters": {"status": "available"}, "offset": 3,
                                           "sort": [("display_name", "asc")]})):
        page = {"sort": None, "marker": None, "filters": None, "like_filters": None,
                "offset": None, "with_count": False, **extra}
        with db.engine.connect() as conn:
            for _ in range(20):  # prepared from the 5th; custom plans for its first 5 runs
                rows, _, _ = api.backup_view_rows(conn, ctx, with_metadata=True, limit=10,
                                                  **page)
                assert len(rows) == 10
            plans = conn.execute(text(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement LIKE :pattern"), {"pattern": f"%ORDER BY backups.{order}%"}).all()
        assert len(plans) == 1
        generic, custom = plans[0]
        assert generic >= 5 and custom <= 5, (extra, plans)
