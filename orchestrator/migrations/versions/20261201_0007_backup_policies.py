"""backup policies: schedules, retention, and the runs they made

A policy's next due time is indexed (only set while it is enabled), so the
scheduler's tick costs one index probe when nothing is due. Each due time
claimed is a row of backup_policy_runs, unique per (policy, due time): a
second claim of the same due time cannot commit. Backups remember the policy
that created them and the rules that kept them at the last prune.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 23:30:00.000000
"""
import sqlalchemy as sa

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('backup_policies',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('project_id', sa.String(length=255), nullable=False),
    sa.Column('user_id', sa.String(length=255), nullable=False),
    sa.Column('display_name', sa.String(length=255), nullable=True),
    sa.Column('display_description', sa.String(length=255), nullable=True),
    sa.Column('cron', sa.String(length=255), nullable=True),
    sa.Column('interval_seconds', sa.Integer(), nullable=True),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('start_window_seconds', sa.Integer(), nullable=False),
    sa.Column('run_missed', sa.Boolean(), nullable=False),
    sa.Column('volume_ids', sa.JSON(), nullable=False),
    sa.Column('volume_metadata', sa.JSON(), nullable=False),
    sa.Column('full_every', sa.Integer(), nullable=True),
    sa.Column('full_every_days', sa.Integer(), nullable=True),
    sa.Column('retention', sa.JSON(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('next_run_at', sa.DateTime(), nullable=True),
    sa.Column('last_run_at', sa.DateTime(), nullable=True),
    sa.Column('missed_runs', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_prune', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=True),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('deleted_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_backup_policies'))
    )
    op.create_index('ix_backup_policies_due', 'backup_policies', ['next_run_at'], unique=False,
                    postgresql_where=sa.text('next_run_at IS NOT NULL'),
                    sqlite_where=sa.text('next_run_at IS NOT NULL'))
    op.create_index('ix_backup_policies_deleted_project_id', 'backup_policies',
                    ['deleted', 'project_id', 'created_at', 'id'], unique=False)
    op.create_table('backup_policy_runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('policy_id', sa.String(length=36), nullable=False),
    sa.Column('due_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('coalesced', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('backup_ids', sa.JSON(), nullable=False),
    sa.Column('errors', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_backup_policy_runs')),
    sa.UniqueConstraint('policy_id', 'due_at', name=op.f('uq_backup_policy_runs_policy_id_due_at'))
    )
    with op.batch_alter_table('backups') as batch:
        batch.add_column(sa.Column('policy_id', sa.String(length=36), nullable=True))
        batch.add_column(sa.Column('kept_by', sa.JSON(), nullable=True))
    op.create_index('ix_backups_policy_id', 'backups', ['policy_id', 'volume_id'], unique=False,
                    postgresql_where=sa.text('policy_id IS NOT NULL'),
                    sqlite_where=sa.text('policy_id IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_backups_policy_id', table_name='backups')
    with op.batch_alter_table('backups') as batch:
        batch.drop_column('kept_by')
        batch.drop_column('policy_id')
    op.drop_table('backup_policy_runs')
    op.drop_index('ix_backup_policies_deleted_project_id', table_name='backup_policies')
    op.drop_index('ix_backup_policies_due', table_name='backup_policies')
    op.drop_table('backup_policies')
