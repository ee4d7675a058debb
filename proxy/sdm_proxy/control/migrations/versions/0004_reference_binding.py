"""credentials.ref_binding: a secret reference sealed to its destination

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 06:40:00.000000

Why: a credential that holds a secret reference (aws-sm:, file:) had no sealed secret, so nothing
bound it to where its secret goes: whoever could write the state database could point its
datasource at a host of theirs. The reference is now sealed like a secret, for the credential's
encryption context (vault/envelope.py), and checked at every unlock (control/unlock.py). Rows from
before keep NULL until `sdm master-key rotate --reseal` binds them.

One nullable column: no table rebuild.
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('credentials', sa.Column('ref_binding', sa.Text(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35 and later), not batch mode: batch mode rebuilds
    # `credentials`, and dropping the old table would cascade to every lease and grant.
    op.drop_column('credentials', 'ref_binding')
