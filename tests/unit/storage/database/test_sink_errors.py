"""Why the database cannot be reached is kept and logged once per change of reason."""

import logging
from pathlib import Path

import pytest

from storage.database import Sink
from storage.errors import DatabaseUnavailable


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_reason_logged_once_per_change_and_cleared(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "not-yet"
    sink = Sink(f"sqlite:///{folder / 'rs.db'}", cluster="c", journal="j")
    caplog.set_level(logging.INFO, logger="storage.database.sink")
    try:
        assert not sink.probe() and not sink.probe()
        # Every caller reports, not only the probe.
        with pytest.raises(DatabaseUnavailable):
            sink.positions()
        assert sink.last_error == "OperationalError: unable to open database file"
        assert warnings(caplog) == [
            f"database sqlite:///{folder / 'rs.db'}: cannot reach it: {sink.last_error}"
        ]
        folder.mkdir()
        assert sink.probe()
        assert sink.last_error is None
        assert caplog.records[-1].getMessage().endswith("reachable")
    finally:
        sink.close()


def test_reason_of_a_refused_connection_names_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink("postgresql+psycopg://rs:pw-S3cret-5@127.0.0.1:9/db", cluster="c", journal="j")
    try:
        assert not sink.probe()
        with pytest.raises(DatabaseUnavailable):
            sink.write_batch([], positions={"s": 1}, epoch=1)
    finally:
        sink.close()
    assert "Connection refused" in sink.last_error and "\n" not in sink.last_error
    assert len(warnings(caplog)) == 1
    assert "pw-S3cret-5" not in caplog.text
