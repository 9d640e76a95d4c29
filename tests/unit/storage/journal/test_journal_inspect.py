import json
from pathlib import Path

import pytest

from reporting.cli import main
from storage.journal import Journal
from storage.journal.record import FRAME_SIZE, HEADER_SIZE


def test_inspect_prints_segments_pending_and_quarantined(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Journal(journal_dir, writer="rs-a", epoch=3) as journal:
        position = journal.append_batch([b"one", b"two"])
    (journal_dir / "quarantine").mkdir()
    (journal_dir / "quarantine" / "00000000-e0000001-rs-b.seg").write_bytes(b"damaged")
    with (journal_dir / position.segment).open("ab") as f:
        f.write(b"\x07")  # a torn tail: inspecting must leave it alone
    assert main(["journal", "inspect", str(journal_dir)]) == 0
    out = capsys.readouterr().out
    assert position.segment in out
    assert "pending: 2 records" in out
    assert "quarantined: 1" in out and "00000000-e0000001-rs-b.seg" in out
    assert "1 bytes after the last record" in out
    assert (journal_dir / position.segment).stat().st_size == position.byte + 1

    assert main(["journal", "inspect", str(journal_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [segment] = doc["segments"]
    assert segment["name"] == position.segment
    assert (segment["writer"], segment["epoch"], segment["records"]) == ("rs-a", 3, 2)
    assert segment["end"] == position.byte == HEADER_SIZE + 2 * FRAME_SIZE + 6
    assert doc["pending"] == {"records": 2, "bytes": 2 * FRAME_SIZE + 6}
    assert doc["quarantined"] == [str(journal_dir / "quarantine" / "00000000-e0000001-rs-b.seg")]


def test_inspect_of_a_foreign_file_or_a_missing_directory_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["journal", "inspect", str(tmp_path / "missing")]) == 1
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["journal", "inspect", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "notes.txt") in err


def test_inspect_shows_damaged_bytes_skipped_and_their_quarantine_copy(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Journal(journal_dir, writer="rs-a") as journal:
        position = journal.append_batch([b"one", b"two", b"three"])
    path = journal_dir / position.segment
    data = bytearray(path.read_bytes())
    start = HEADER_SIZE + FRAME_SIZE + 3
    end = start + FRAME_SIZE + 3
    data[start + FRAME_SIZE] ^= 0x20  # "two" -> "Two"
    path.write_bytes(bytes(data))
    # Before a server opened it: the damage is found, nothing is copied.
    assert main(["journal", "inspect", str(journal_dir)]) == 0
    out = capsys.readouterr().out
    assert f"damaged bytes {start}-{end} skipped; not yet copied to quarantine" in out
    assert "pending: 2 records" in out and "quarantined: 0" in out
    Journal(journal_dir, writer="rs-a").close()  # the writer sets the bytes aside
    assert main(["journal", "inspect", str(journal_dir)]) == 0
    out = capsys.readouterr().out
    assert f"damaged bytes {start}-{end} skipped" in out and "not yet" not in out
    saved = journal_dir / "quarantine" / f"{position.segment}.bytes-{start}-{end}"
    assert f"quarantined: 1\n  {saved} ({end - start} bytes)" in out
    assert main(["journal", "inspect", str(journal_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["segments"][0]["holes"] == [[start, end]]
    assert doc["quarantined"] == [str(saved)]
