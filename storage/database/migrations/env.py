"""Alembic environment: always run from storage.database.migrate with a connection in hand."""

from alembic import context

from storage.database.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `reporting-server db upgrade --config FILE`")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
