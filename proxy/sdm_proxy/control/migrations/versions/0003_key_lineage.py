"""sessions.api_key_id and api_keys.parent_key_id: revoking a key ends what it made

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 06:00:00.000000

Why: a leaked API key could mint a 24-hour session and a fresh key of its own user; revoking the
leaked key left both working. Sessions now name the key that created them, and a key minted by
its own user names the key that minted it, so a revocation reaches both (control/users.py).
Rows from before this revision keep NULL: they are not linked to any key.

Two nullable columns and their indexes: no table rebuild on SQLite or PostgreSQL.
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('sessions', sa.Column('api_key_id', sa.Integer(), nullable=True))
    op.create_index('ix_sessions_api_key_id', 'sessions', ['api_key_id'])
    op.add_column('api_keys', sa.Column('parent_key_id', sa.Integer(), nullable=True))
    op.create_index('ix_api_keys_parent_key_id', 'api_keys', ['parent_key_id'])


def downgrade() -> None:
    # Plain DROP INDEX / DROP COLUMN (SQLite 3.35 and later), not batch mode's table rebuild.
    op.drop_index('ix_api_keys_parent_key_id', table_name='api_keys')
    op.drop_column('api_keys', 'parent_key_id')
    op.drop_index('ix_sessions_api_key_id', table_name='sessions')
    op.drop_column('sessions', 'api_key_id')
