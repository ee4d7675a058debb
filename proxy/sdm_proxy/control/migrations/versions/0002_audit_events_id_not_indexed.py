"""audit_events.id is no longer a unique index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 18:00:00.000000

Why: ids are random UUID4s, so every insert landed on a random page of that index and chaining
slowed down as the log grew. Nothing looks events up by id on a hot path; spool recovery (the one
reader) finds recent ids by ``ts`` instead (``AuditReader.known_ids``).

On SQLite this rebuilds ``audit_events`` (batch mode: copy, drop, rename, re-create the ``ts``,
``type`` and ``user`` indexes), once, in time proportional to the log's size. PostgreSQL drops the
constraint in place.
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# 0001 left the constraint unnamed: SQLite reflects it without a name, so batch mode names it by this
# convention to drop it. PostgreSQL named it itself; that name is reflected.
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
_SQLITE_NAME = "uq_audit_events_id"
_POSTGRES_NAME = "audit_events_id_key"  # what PostgreSQL called 0001's constraint


def upgrade() -> None:
    name = _id_unique_name() or _SQLITE_NAME
    with op.batch_alter_table('audit_events', schema=None, naming_convention=_NAMING) as batch_op:
        batch_op.drop_constraint(name, type_='unique')


def downgrade() -> None:
    # Fails if the log now holds an id twice (nothing prevents that any more): find them first with
    # SELECT id FROM audit_events GROUP BY id HAVING count(*) > 1.
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_unique_constraint(_POSTGRES_NAME, ['id'])


def _id_unique_name() -> str | None:
    """The name of the unique constraint on exactly ``audit_events.id`` (None: unnamed, SQLite)."""
    for uc in sa.inspect(op.get_bind()).get_unique_constraints('audit_events'):
        if uc['column_names'] == ['id']:
            return uc['name']
    raise RuntimeError("audit_events has no unique constraint on id: not the schema of revision 0001")
