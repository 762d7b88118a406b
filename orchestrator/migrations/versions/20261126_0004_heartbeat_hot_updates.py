"""services: heartbeats update no indexed column

A heartbeat rewrites updated_at and report_count of its host's rows, a
hundred times a second with 1,000 hosts. With updated_at in two indexes,
every heartbeat inserted new entries into four indexes; without it,
PostgreSQL updates the row in place on its page (a HOT update: no index work,
little bloat), helped by pages kept half empty. Host choice reads the live
hosts of a binary and zone through (binary, availability_zone) and filters the
heartbeat age on the rows: a few hundred microseconds at 1,000 hosts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 01:25:00.000000
"""
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_services_updated_at', table_name='services')
    op.drop_index('ix_services_binary_live', table_name='services')
    op.create_index('ix_services_binary_live', 'services', ['binary', 'availability_zone'],
                    unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE services SET (fillfactor = 50)')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE services RESET (fillfactor)')
    op.drop_index('ix_services_binary_live', table_name='services')
    op.create_index('ix_services_binary_live', 'services',
                    ['binary', 'availability_zone', 'updated_at'], unique=False)
    op.create_index('ix_services_updated_at', 'services', ['updated_at'], unique=False)
