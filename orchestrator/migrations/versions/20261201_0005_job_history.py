"""jobs: a history of what happened to a job besides its state

Each transient failure that the worker retried in place (and the backoff it
waited) is appended here, so an operator can see why a job took longer than
its data alone would explain. NULL for the common job that ran once.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 20:40:00.000000
"""
import sqlalchemy as sa

from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('history', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('history')
