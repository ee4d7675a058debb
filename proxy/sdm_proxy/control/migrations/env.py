"""Alembic environment: the engine is handed in by ``sdm_proxy.control.db``."""

from alembic import context

from sdm_proxy.control.models import Base

engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
