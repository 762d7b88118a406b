"""store_objects and backup_objects: shared, reference-counted backup data

A backup of the shared-block format (data_format 2) references pack and index
objects that may have been written by earlier backups of its volume. Every such
object has one store_objects row whose ref_count is the number of backups that
reference it (their backup_objects rows): the source of truth for what may be
freed. ``state`` is ``live`` or ``removing`` (claimed by a collector; from
then on nothing may reference it). backups.data_format tells the formats apart
(NULL: the chain format, where only the newest backup may be deleted).
jobs.result keeps what a job reports (what a garbage collection freed).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:50:00.000000
"""
import sqlalchemy as sa

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'store_objects',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                  primary_key=True, autoincrement=True),
        sa.Column('store', sa.String(255), nullable=False),
        sa.Column('name', sa.String(1024), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('sha256', sa.String(64), nullable=False),
        sa.Column('ref_count', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('released_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_store_objects')),
        sa.UniqueConstraint('store', 'name', name=op.f('uq_store_objects_store_name')),
    )
    op.create_index('ix_store_objects_garbage', 'store_objects', ['store', 'id'],
                    postgresql_where=sa.text('ref_count = 0'),
                    sqlite_where=sa.text('ref_count = 0'))
    op.create_table(
        'backup_objects',
        sa.Column('backup_id', sa.String(36), nullable=False),
        sa.Column('object_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                  nullable=False),
        sa.ForeignKeyConstraint(['object_id'], ['store_objects.id'],
                                name=op.f('fk_backup_objects_object_id_store_objects')),
        sa.PrimaryKeyConstraint('backup_id', 'object_id', name=op.f('pk_backup_objects')),
    )
    op.create_index('ix_backup_objects_object_id', 'backup_objects', ['object_id'])
    with op.batch_alter_table('backups') as batch:
        batch.add_column(sa.Column('data_format', sa.Integer(), nullable=True))
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('result', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('result')
    with op.batch_alter_table('backups') as batch:
        batch.drop_column('data_format')
    op.drop_index('ix_backup_objects_object_id', table_name='backup_objects')
    op.drop_table('backup_objects')
    op.drop_index('ix_store_objects_garbage', table_name='store_objects')
    op.drop_table('store_objects')
