"""`reporting-server db upgrade --config FILE` against SQLite."""

from pathlib import Path

import pytest

from reporting.cli import main
from storage.database import Sink


def db_upgrade(tmp_path: Path, config: str) -> int:
    """`db upgrade` with a config file of this text in tmp_path; its exit status."""
    path = tmp_path / "rs.toml"
    path.write_text(config)
    return main(["db", "upgrade", "--config", str(path)])


def test_db_upgrade_creates_then_finds_nothing_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = 'name = "rs-a"\n[database]\nurl = "sqlite:///reports.db"\n'

    assert db_upgrade(tmp_path, config) == 0
    assert db_upgrade(tmp_path, config) == 0

    assert "schema is up to date" in capsys.readouterr().out
    sink = Sink(f"sqlite:///{tmp_path / 'reports.db'}", cluster="rs-a", journal="rs-a")
    assert sink.count_reports() == 0
    sink.close()


def test_db_upgrade_unreachable_database_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = '[database]\nurl = "postgresql+psycopg://nobody@127.0.0.1:1/none"\n'
    assert db_upgrade(tmp_path, config) == 1
    err = capsys.readouterr().err
    assert err.startswith("reporting-server: database ") and "unavailable" in err
    assert len(err.strip().splitlines()) == 1
