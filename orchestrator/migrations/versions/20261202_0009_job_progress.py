"""jobs: each job's own progress

A job's progress (bytes done of total, bytes skipped as holes or zeros, rate,
and when it was last written) lives on its own row, so a restore or a verify
of a backup no longer overwrites what its create recorded, and a progress
that stopped moving can be told from a slow one by its ``updated_at``.
NULL until the job's run half first reports.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-02 00:00:00.000000
"""
import sqlalchemy as sa

from alembic import op

revision = '0009'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('progress', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('progress')
