"""`alembic upgrade head` builds the schema, and the models agree with it."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy import inspect

from orchestrator.migrate import upgrade
from orchestrator.models import Base


def assert_models_match(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            assert {"backups", "volumes", "snapshots", "services", "jobs", "quotas",
                    "quota_usages", "reservations", "backup_metadata"} <= tables
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        engine.dispose()


def test_sqlite_migrations_match_models(tmp_path):
    assert_models_match(f"sqlite:///{tmp_path / 'm.db'}")


def test_postgres_migrations_match_models(postgres):
    assert_models_match(postgres.url)


def test_upgrade_is_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    upgrade(url)
    upgrade(url)  # already at head: nothing to do, no error
    assert_models_match(url)
