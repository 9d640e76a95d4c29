import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.errors import ForeignFile
from storage.journal import Journal
from storage.journal.record import FRAME_SIZE, HEADER, HEADER_SIZE, encode_batch

Open = Callable[..., Journal]


def datas(journal: Journal) -> list[bytes]:
    return [entry.data for entry in journal.read()]


def write_segment(directory: Path, name: str, records: list[bytes], tail: bytes = b"") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(HEADER + encode_batch(records) + tail)
    return path


def age(path: Path, seconds: float = 3600) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


RECORDS = [b"first", b"second" * 20, b"third"]
TORN_TAILS = {
    "half a frame": b"\x05\x00\x00",
    "frame without payload": encode_batch([b"payload"])[:FRAME_SIZE],
    "half a payload": encode_batch([b"payload" * 10])[:40],
    "garbage": b"\xff" * 3 + b"\x13\x37" * 50,
    "zeros": b"\x00" * 4096,
}


@pytest.mark.parametrize("tail", TORN_TAILS.values(), ids=TORN_TAILS.keys())
def test_a_torn_tail_of_our_own_segment_is_truncated(
    open_journal: Open, journal_dir: Path, tail: bytes
) -> None:
    path = write_segment(journal_dir, "00000001-e0000000-rs-a.seg", RECORDS, tail)
    good = path.stat().st_size - len(tail)
    journal = open_journal()
    assert path.stat().st_size == good
    assert datas(journal) == RECORDS
    assert journal.quarantined == []
    journal.append_batch([b"after"])
    assert datas(open_journal()) == RECORDS + [b"after"]


def test_a_live_writers_torn_tail_is_read_up_to_but_not_truncated(
    open_journal: Open, journal_dir: Path
) -> None:
    tail = encode_batch([b"in flight"])[:10]
    path = write_segment(journal_dir, "00000001-e0000000-rs-b.seg", RECORDS, tail)
    size = path.stat().st_size
    journal = open_journal(foreign_grace_s=60)
    assert datas(journal) == RECORDS
    assert path.stat().st_size == size
    # The other writer finishes its batch: the record becomes visible.
    with path.open("r+b") as f:
        f.seek(size - len(tail))
        f.write(encode_batch([b"in flight"]))
    assert datas(journal) == RECORDS + [b"in flight"]
    assert journal.pending.records == 4


def test_a_stale_writers_torn_tail_is_truncated(open_journal: Open, journal_dir: Path) -> None:
    path = write_segment(journal_dir, "00000001-e0000000-rs-b.seg", RECORDS, b"\x01\x02")
    age(path)
    open_journal(foreign_grace_s=10)
    assert path.stat().st_size == len(HEADER + encode_batch(RECORDS))


def test_flipped_bytes_mid_segment_quarantine_it_and_other_segments_are_read(
    open_journal: Open, journal_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_segment(journal_dir, "00000001-e0000000-rs-a.seg", [b"one", b"two"])
    bad = write_segment(journal_dir, "00000002-e0000000-rs-a.seg", RECORDS + [b"more"])
    write_segment(journal_dir, "00000003-e0000000-rs-a.seg", [b"three"])
    data = bytearray(bad.read_bytes())
    data[HEADER_SIZE + FRAME_SIZE + len(RECORDS[0]) + FRAME_SIZE + 7] ^= 0x40
    bad.write_bytes(bytes(data))
    alarms: list[tuple[Path, str]] = []
    with caplog.at_level(logging.WARNING, logger="storage.journal"):
        journal = open_journal(on_quarantine=lambda path, reason: alarms.append((path, reason)))
    moved = journal_dir / "quarantine" / bad.name
    assert journal.quarantined == [moved]
    assert moved.read_bytes() == bytes(data)  # kept whole for the operator
    assert [path for path, _ in alarms] == [moved]
    assert "checksum" in alarms[0][1]
    assert "quarantined" in caplog.text
    assert datas(journal) == [b"one", b"two", b"three"]
    # The next open finds a clean directory; the quarantine folder is not a foreign file.
    journal.close()
    assert datas(open_journal()) == [b"one", b"two", b"three"]


def test_a_flipped_length_field_is_damage_not_a_torn_tail(
    open_journal: Open, journal_dir: Path
) -> None:
    path = write_segment(journal_dir, "00000001-e0000000-rs-a.seg", RECORDS)
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 3] = 0x7F  # the first record now claims ~2 GB
    path.write_bytes(bytes(data))
    journal = open_journal()
    assert journal.quarantined == [journal_dir / "quarantine" / path.name]
    assert datas(journal) == []


def test_damage_in_a_live_writers_segment_stops_reading_there(
    open_journal: Open, journal_dir: Path
) -> None:
    path = write_segment(journal_dir, "00000001-e0000000-rs-b.seg", RECORDS)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01  # inside "second", the last but one record
    path.write_bytes(bytes(data))
    journal = open_journal(foreign_grace_s=3600)
    assert journal.quarantined == []
    assert datas(journal) == RECORDS[:1]
    assert datas(journal) == RECORDS[:1]  # and again: no loop, no crash
    [info] = journal.segments()
    assert info.damaged and info.records == 1
    # Once the other writer has been quiet for the grace time, the segment is quarantined.
    journal.foreign_grace_s = 0.0
    age(path)
    assert datas(journal) == []
    assert journal.quarantined == [journal_dir / "quarantine" / path.name]


def test_damage_found_by_a_later_read_quarantines_the_segment(
    open_journal: Open, journal_dir: Path
) -> None:
    journal = open_journal(segment_bytes=100)
    first = journal.append_batch([b"a" * 60])
    journal.append_batch([b"b" * 60])
    with (journal_dir / first.segment).open("r+b") as f:
        f.seek(HEADER_SIZE + FRAME_SIZE + 5)
        f.write(b"X")
    assert datas(journal) == [b"b" * 60]
    assert journal.quarantined == [journal_dir / "quarantine" / first.segment]


def test_a_zero_length_segment_left_by_a_crash_is_removed(
    open_journal: Open, journal_dir: Path
) -> None:
    write_segment(journal_dir, "00000001-e0000000-rs-a.seg", [b"kept"])
    (journal_dir / "00000002-e0000000-rs-a.seg").write_bytes(b"")
    (journal_dir / "00000003-e0000000-rs-a.seg").write_bytes(HEADER[:5])  # truncated header
    journal = open_journal()
    assert [p.name for p in journal_dir.iterdir()] == ["00000001-e0000000-rs-a.seg"]
    assert datas(journal) == [b"kept"]
    # The numbers are not handed out again.
    assert journal.append_batch([b"x"]).segment.startswith("00000002-")


def test_a_live_writers_empty_new_segment_is_left_alone(
    open_journal: Open, journal_dir: Path
) -> None:
    journal_dir.mkdir()
    fresh = journal_dir / "00000001-e0000000-rs-b.seg"
    fresh.write_bytes(b"")
    journal = open_journal(foreign_grace_s=60)
    assert fresh.exists()
    assert datas(journal) == []
    assert journal.append_batch([b"x"]).segment.startswith("00000002-")


@pytest.mark.parametrize(
    "name, content",
    [
        ("notes.txt", b"hello"),
        ("00000001-e0000000-rs-a.seg", b"PK\x03\x04 a zip file, not a segment"),
        ("00000001-e0000000-rs-a.seg", b"RSJ"[:2] + b"X"),
        ("00000001.seg", HEADER),
    ],
)
def test_a_foreign_file_is_a_clear_error_naming_it(
    journal_dir: Path, name: str, content: bytes
) -> None:
    journal_dir.mkdir()
    (journal_dir / name).write_bytes(content)
    with pytest.raises(ForeignFile) as caught:
        Journal(journal_dir, writer="rs-a")
    assert caught.value.path == str(journal_dir / name)
    assert str(journal_dir / name) in str(caught.value)
    assert (journal_dir / name).read_bytes() == content  # left untouched


def test_a_foreign_directory_is_a_clear_error(journal_dir: Path) -> None:
    (journal_dir / "backup").mkdir(parents=True)
    with pytest.raises(ForeignFile, match="backup"):
        Journal(journal_dir, writer="rs-a")


def test_a_foreign_file_appearing_later_is_skipped_by_readers(
    open_journal: Open, journal_dir: Path
) -> None:
    journal = open_journal()
    journal.append_batch([b"x"])
    (journal_dir / "stray.tmp").write_bytes(b"?")
    assert datas(journal) == [b"x"]
    journal.append_batch([b"y"])
    assert datas(journal) == [b"x", b"y"]


def test_read_only_open_changes_nothing(journal_dir: Path) -> None:
    write_segment(journal_dir, "00000001-e0000000-rs-a.seg", RECORDS, b"\x01\x02\x03")
    damaged = write_segment(journal_dir, "00000002-e0000000-rs-a.seg", RECORDS)
    data = bytearray(damaged.read_bytes())
    data[HEADER_SIZE + FRAME_SIZE] ^= 0xFF
    damaged.write_bytes(bytes(data))
    (journal_dir / "00000003-e0000000-rs-a.seg").write_bytes(b"")

    def snapshot() -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(journal_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in journal_dir.rglob("*")
        }

    before = snapshot()
    journal = Journal.open_readonly(journal_dir)
    assert datas(journal) == RECORDS
    infos = {info.name: info for info in journal.segments()}
    assert infos["00000001-e0000000-rs-a.seg"].size - infos["00000001-e0000000-rs-a.seg"].end == 3
    assert infos["00000002-e0000000-rs-a.seg"].damaged
    journal.close()
    assert snapshot() == before


def test_a_segment_that_cannot_be_moved_is_skipped_not_fatal(
    open_journal: Open, journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = write_segment(journal_dir, "00000001-e0000000-rs-a.seg", RECORDS + [b"more"])
    write_segment(journal_dir, "00000002-e0000000-rs-a.seg", [b"other"])
    data = bytearray(bad.read_bytes())
    data[HEADER_SIZE + FRAME_SIZE + 1] ^= 0x01
    bad.write_bytes(bytes(data))

    def read_only_fs(src: object, dst: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "rename", read_only_fs)
    journal = open_journal()
    assert datas(journal) == [b"other"]
    assert bad.exists() and journal.quarantined == []
    monkeypatch.undo()
    assert datas(journal) == [b"other"]  # moved on the next look
    assert journal.quarantined == [journal_dir / "quarantine" / bad.name]
