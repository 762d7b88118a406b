"""jobs: the request id of the request that created the job

The API's x-openstack-request-id (the caller's, when it sent a valid one) is
stored with each job it creates, and a job created by a job inherits it: the
worker that runs the job logs it on every line, and the Celery message
carries it to Flower. NULL for jobs created before this revision.

Revision ID: 0008
Revises: 0009
Create Date: 2026-12-01 23:40:00.000000
"""
import sqlalchemy as sa

from alembic import op

revision = '0008'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('request_id', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('request_id')
