"""Alembic environment for developers (`alembic revision --autogenerate`); the product runs
migrations from storage.database.migrate without this file."""

from alembic import context
from sqlalchemy import create_engine

from storage.database.schema import metadata

url = context.config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError("set sqlalchemy.url (alembic -x or alembic.ini) to a scratch database")
with create_engine(url).connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
