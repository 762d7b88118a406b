"""backups.parent_id index holds incremental backups only

Most backups are full (parent_id NULL). The list's has_dependent_backups
probe and the dependents count look children up by parent_id; an index of
the rows that have a parent stays tiny however many backups exist, so each
probe costs the same at a million backups as at a thousand.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 00:50:00.000000
"""
import sqlalchemy as sa

from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_WHERE = sa.text('parent_id IS NOT NULL')


def upgrade() -> None:
    op.drop_index('ix_backups_parent_id', table_name='backups')
    op.create_index('ix_backups_parent_id', 'backups', ['parent_id'], unique=False,
                    postgresql_where=_WHERE, sqlite_where=_WHERE)


def downgrade() -> None:
    op.drop_index('ix_backups_parent_id', table_name='backups')
    op.create_index('ix_backups_parent_id', 'backups', ['parent_id'], unique=False)
