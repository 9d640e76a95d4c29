"""Schema migrations: Alembic, configured in code so that it runs from any directory."""

from importlib import resources
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from storage.database.schema import metadata
from storage.errors import DatabaseError

# Any constant will do, as long as every instance uses the same one.
ADVISORY_LOCK_KEY = 0x5265706F7274  # "Report"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files(__package__) / "migrations"))
    return config


def upgrade(engine: Engine) -> None:
    """Migrate to the newest revision; a second caller waits, then finds nothing to do."""
    config = alembic_config()
    if engine.dialect.name in ("mysql", "mariadb"):
        _upgrade_locked(engine, config)
        return
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Held to the end of the transaction; PostgreSQL's DDL is transactional, so the
            # second instance sees either no schema or all of it.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        _run(conn, config)


def _upgrade_locked(engine: Engine, config: Config) -> None:
    # MariaDB commits each DDL statement on its own, so a transaction cannot hold a second
    # instance off: a named lock of the session does, until released.
    with engine.connect() as conn:
        name = f"reporting-migrate-{ADVISORY_LOCK_KEY}"
        locked = conn.scalar(text("SELECT GET_LOCK(:name, 300)"), {"name": name})
        conn.commit()  # the lock is the session's, and outlives the transaction
        if locked != 1:
            raise DatabaseError("another instance held the migration lock for 300 s")
        try:
            with conn.begin():
                _run(conn, config)
        finally:
            conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
            conn.commit()


def _run(conn: Connection, config: Config) -> None:
    script = ScriptDirectory.from_config(config)

    def upgrade_steps(revision: Any, _context: Any) -> Any:
        return script._upgrade_revs("head", revision)

    # Run here rather than through env.py, which the package data of a wheel leaves out
    # (env.py stays for developers running `alembic revision`).
    with EnvironmentContext(config, script, fn=upgrade_steps, destination_rev="head") as env:
        env.configure(connection=conn, target_metadata=metadata)
        with env.begin_transaction():
            env.run_migrations()


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
