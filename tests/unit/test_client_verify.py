"""`verify`: the ledger against a SQLite database filled by hand."""

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, insert, text

from reporting.cli import main
from reporting.commands.verify import check
from storage.database import Sink
from storage.database.schema import rejected_reports, reports

NOW = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'reports.db'}"
    sink = Sink(url, cluster="test", journal="test")
    sink.upgrade()
    sink.close()
    engine = create_engine(url)

    def store(*report_ids: str, rejected: bool = False) -> None:
        with engine.begin() as conn:
            for report_id in report_ids:
                if rejected:
                    row = {"report_id": report_id, "queue": "q", "reason": "r", "raw": b""}
                    row |= {"received_at": NOW, "digest": report_id}
                    conn.execute(insert(rejected_reports).values(**row))
                else:
                    row = {"report_id": report_id, "kind": "sq", "queue": "gvp.reporting.sq"}
                    row |= {"payload": {}, "received_at": NOW}
                    conn.execute(insert(reports).values(**row))

    store.engine = engine  # type: ignore[attr-defined]
    store.url = url  # type: ignore[attr-defined]
    yield store
    engine.dispose()


def test_all_stored_with_repeated_ledger_lines(db, tmp_path):
    db("a", "b", "c")
    ledger = tmp_path / "ledger"
    ledger.write_text("a\nb\na\nc\n")
    verdict = check(db.url, ledger)
    assert (verdict.sent, verdict.stored, verdict.missing, verdict.duplicated) == (3, 3, 0, 0)
    assert verdict.repeated_lines == 1 and verdict.ok


def test_missing_and_duplicated(tmp_path):
    # The real schema's unique index forbids duplicates; verify must still catch them.
    url = f"sqlite:///{tmp_path / 'loose.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE reports (id INTEGER PRIMARY KEY, report_id TEXT)"))
        for report_id in ("a", "b", "b"):
            conn.execute(text("INSERT INTO reports (report_id) VALUES (:i)"), {"i": report_id})
    engine.dispose()
    ledger = tmp_path / "ledger"
    ledger.write_text("a\nb\nc\nd\n")
    verdict = check(url, ledger)
    assert (verdict.sent, verdict.stored, verdict.missing, verdict.duplicated) == (4, 2, 2, 1)
    assert verdict.missing_ids == ["c", "d"] and verdict.duplicated_ids == ["b"]
    assert not verdict.ok


def test_rejected_companion_file(db, tmp_path):
    db("a")
    db("bad-1", rejected=True)
    ledger = tmp_path / "ledger"
    ledger.write_text("a\n")
    (tmp_path / "ledger.rejected").write_text("bad-1\nbad-2\n")
    verdict = check(db.url, ledger)
    assert (verdict.rejected_expected, verdict.rejected_found) == (2, 1)
    assert verdict.rejected_missing_ids == ["bad-2"] and not verdict.ok


def test_command_exit_codes_and_json(db, tmp_path, capsys):
    db("a")
    config = tmp_path / "rs.toml"
    config.write_text(f'name = "rs-a"\n[database]\nurl = "{db.url}"\n')
    ledger = tmp_path / "ledger"
    ledger.write_text("a\n")
    assert main(["verify", "--config", str(config), "--ledger", str(ledger)]) == 0
    assert capsys.readouterr().out.startswith("sent 1, stored 1, missing 0, duplicated 0")
    ledger.write_text("a\nz\n")
    assert main(["verify", "--config", str(config), "--ledger", str(ledger), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["missing"] == 1 and doc["missing_ids"] == ["z"] and doc["ok"] is False


def test_missing_ledger_is_one_line(db, tmp_path, capsys):
    config = tmp_path / "rs.toml"
    config.write_text(f'name = "rs-a"\n[database]\nurl = "{db.url}"\n')
    assert main(["verify", "--config", str(config), "--ledger", str(tmp_path / "nope")]) == 1
    assert "not found" in capsys.readouterr().err
