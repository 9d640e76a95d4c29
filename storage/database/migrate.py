"""Schema migrations: Alembic, configured in code so that it runs from any directory."""

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

# Any constant will do, as long as every instance uses the same one.
ADVISORY_LOCK_KEY = 0x5265706F7274  # "Report"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files(__package__) / "migrations"))
    return config


def upgrade(engine: Engine) -> None:
    """Migrate to the newest revision; a second caller waits, then finds nothing to do."""
    config = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Held to the end of the transaction; PostgreSQL's DDL is transactional, so the
            # second instance sees either no schema or all of it.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
