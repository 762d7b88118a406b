"""project_keys: one key id may be held by several projects of the deployment

An admin's import of another project's encrypted backup registers the wrapped
keys the record carries for the importing project too (re-wrapped for it: the
wrapping binds the project). The key id names the key in every object header,
so the same key id is then a row of two projects: the primary key becomes
(project_id, key_id).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 03:00:00.000000
"""
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('project_keys') as batch:
        batch.drop_constraint('pk_project_keys', type_='primary')
        batch.create_primary_key('pk_project_keys', ['project_id', 'key_id'])


def downgrade() -> None:
    # A key id held by several projects keeps its oldest row (the exporting project's).
    op.execute("DELETE FROM project_keys WHERE EXISTS (SELECT 1 FROM project_keys older "
               "WHERE older.key_id = project_keys.key_id AND (older.created_at < "
               "project_keys.created_at OR (older.created_at = project_keys.created_at AND "
               "older.project_id < project_keys.project_id)))")
    with op.batch_alter_table('project_keys') as batch:
        batch.drop_constraint('pk_project_keys', type_='primary')
        batch.create_primary_key('pk_project_keys', ['key_id'])
