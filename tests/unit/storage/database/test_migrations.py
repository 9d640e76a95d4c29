"""Migrations: from empty, repeatable, and matching the tables in schema.py."""

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from storage.database import migrate
from storage.database.engine import make_engine
from storage.database.schema import metadata


def test_upgrade_twice_reaches_head_and_matches_schema(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(engine)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert migrate.current(conn) == migrate.head() == "0003"
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_upgrade_works_from_another_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    engine = make_engine("sqlite:///relative.db")
    migrate.upgrade(engine)
    assert (tmp_path / "relative.db").exists()
    engine.dispose()
