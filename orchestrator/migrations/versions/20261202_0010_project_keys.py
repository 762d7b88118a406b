"""project_keys: wrapped per-project data and identity keys (encryption at rest)

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-02 00:40:00.000000
"""
import sqlalchemy as sa

from alembic import op

revision = '0010'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'project_keys',
        sa.Column('key_id', sa.String(36), nullable=False),
        sa.Column('project_id', sa.String(255), nullable=False),
        sa.Column('purpose', sa.String(16), nullable=False),
        sa.Column('wrapped', sa.Text(), nullable=False),
        sa.Column('kek_id', sa.String(64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('retired_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('key_id', name=op.f('pk_project_keys')),
    )
    op.create_index('uq_project_keys_current', 'project_keys', ['project_id', 'purpose'],
                    unique=True, postgresql_where=sa.text('retired_at IS NULL'),
                    sqlite_where=sa.text('retired_at IS NULL'))


def downgrade() -> None:
    op.drop_index('uq_project_keys_current', table_name='project_keys')
    op.drop_table('project_keys')
