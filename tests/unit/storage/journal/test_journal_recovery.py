import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.errors import ForeignFile
from storage.journal import Journal
from storage.journal import journal as journal_module
from storage.journal.record import FRAME_SIZE, HEADER, HEADER_SIZE, encode_batch

Open = Callable[..., Journal]


def datas(journal: Journal) -> list[bytes]:
    return [entry.data for entry in journal.read()]


def private_dir(directory: Path) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def write_segment(directory: Path, name: str, records: list[bytes], tail: bytes = b"") -> Path:
    private_dir(directory)
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
    journal.close()
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


def hole_name(segment: Path, start: int, end: int) -> str:
    return f"{segment.name}.bytes-{start}-{end}"


def test_a_flipped_byte_mid_segment_loses_only_its_record(
    open_journal: Open, journal_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_segment(journal_dir, "00000001-e0000000-rs-a.seg", [b"one", b"two"])
    bad = write_segment(journal_dir, "00000002-e0000000-rs-a.seg", RECORDS + [b"more"])
    write_segment(journal_dir, "00000003-e0000000-rs-a.seg", [b"three"])
    data = bytearray(bad.read_bytes())
    start = HEADER_SIZE + FRAME_SIZE + len(RECORDS[0])  # the record "second..."
    end = start + FRAME_SIZE + len(RECORDS[1])
    data[start + FRAME_SIZE + 7] ^= 0x40
    bad.write_bytes(bytes(data))
    alarms: list[tuple[Path, str]] = []
    with caplog.at_level(logging.WARNING, logger="storage.journal"):
        journal = open_journal(on_quarantine=lambda path, reason: alarms.append((path, reason)))
    saved = journal_dir / "quarantine" / hole_name(bad, start, end)
    assert journal.quarantined == [saved]
    assert saved.read_bytes() == bytes(data[start:end])  # only the damaged record
    assert bad.read_bytes() == bytes(data)  # the segment itself is never rewritten
    assert [path for path, _ in alarms] == [saved]
    assert "checksum" in alarms[0][1]
    assert "set aside" in caplog.text
    expected = [b"one", b"two", RECORDS[0], RECORDS[2], b"more", b"three"]
    assert datas(journal) == expected
    assert journal.pending.records == len(expected)
    assert journal.pending.bytes == sum(FRAME_SIZE + len(r) for r in expected)
    # The next open finds the same hole, reads around it and copies nothing again.
    journal.close()
    alarms.clear()
    again = open_journal(on_quarantine=lambda path, reason: alarms.append((path, reason)))
    assert datas(again) == expected and alarms == [] and again.quarantined == [saved]
    # Drained to its end, the damaged segment is released like any other.
    positions = {e.position.segment: e.position.byte for e in again.read()}
    assert bad.name in again.release(positions)


def test_a_flipped_length_field_is_damage_not_a_torn_tail(
    open_journal: Open, journal_dir: Path
) -> None:
    path = write_segment(journal_dir, "00000001-e0000000-rs-a.seg", RECORDS)
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 3] = 0x7F  # the first record now claims ~2 GB
    path.write_bytes(bytes(data))
    journal = open_journal()
    first_end = HEADER_SIZE + FRAME_SIZE + len(RECORDS[0])
    assert journal.quarantined == [
        journal_dir / "quarantine" / hole_name(path, HEADER_SIZE, first_end)
    ]
    assert datas(journal) == RECORDS[1:]


def test_a_damaged_last_record_is_quarantined_before_the_tail_is_cut(
    open_journal: Open, journal_dir: Path
) -> None:
    path = write_segment(journal_dir, "00000001-e0000000-rs-a.seg", RECORDS)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01  # inside "third": complete, not zeros, CRC wrong
    path.write_bytes(bytes(data))
    last = len(data) - FRAME_SIZE - len(RECORDS[2])
    journal = open_journal()
    saved = journal_dir / "quarantine" / hole_name(path, last, len(data))
    assert journal.quarantined == [saved]
    assert saved.read_bytes() == bytes(data[last:])
    assert path.stat().st_size == last
    assert datas(journal) == RECORDS[:2]


def test_a_damaged_header_is_set_aside_and_the_records_read(
    open_journal: Open, journal_dir: Path
) -> None:
    path = write_segment(journal_dir, "00000001-e0000000-rs-a.seg", RECORDS)
    data = bytearray(path.read_bytes())
    data[2] ^= 0xFF
    path.write_bytes(bytes(data))
    journal = open_journal()
    assert journal.quarantined == [journal_dir / "quarantine" / hole_name(path, 0, HEADER_SIZE)]
    assert datas(journal) == RECORDS
    assert journal.pending.records == 3


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
    # Once the other writer has been quiet for the grace time, the hole is set aside.
    journal.foreign_grace_s = 0.0
    age(path)
    assert datas(journal) == [RECORDS[0], RECORDS[2]]
    start = HEADER_SIZE + FRAME_SIZE + len(RECORDS[0])
    end = start + FRAME_SIZE + len(RECORDS[1])
    assert journal.quarantined == [journal_dir / "quarantine" / hole_name(path, start, end)]
    [info] = journal.segments()
    assert not info.damaged and info.holes == ((start, end),)


def test_damage_found_by_a_later_read_is_set_aside(open_journal: Open, journal_dir: Path) -> None:
    journal = open_journal(segment_bytes=100)
    first = journal.append_batch([b"a" * 60])
    journal.append_batch([b"b" * 60])
    with (journal_dir / first.segment).open("r+b") as f:
        f.seek(HEADER_SIZE + FRAME_SIZE + 5)
        f.write(b"X")
    assert datas(journal) == [b"b" * 60]
    saved = f"{first.segment}.bytes-{HEADER_SIZE}-{first.byte}"
    assert journal.quarantined == [journal_dir / "quarantine" / saved]


def test_a_hole_that_cannot_be_copied_keeps_its_segment_until_it_is(
    open_journal: Open, journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = write_segment(journal_dir, "00000001-e0000000-rs-a.seg", RECORDS + [b"more"])
    write_segment(journal_dir, "00000002-e0000000-rs-a.seg", [b"other"])
    data = bytearray(bad.read_bytes())
    data[HEADER_SIZE + FRAME_SIZE + 1] ^= 0x01
    bad.write_bytes(bytes(data))

    real_create = journal_module.create_private

    def disk_full(path: Path, flags: int) -> int:
        if "quarantine" in str(path):
            raise OSError(28, "No space left on device")
        return real_create(path, flags)

    monkeypatch.setattr(journal_module, "create_private", disk_full)
    journal = open_journal()
    # The drain goes on around the damage while its bytes cannot be copied...
    assert datas(journal) == RECORDS[1:] + [b"more", b"other"]
    assert journal.quarantined == []
    positions = {e.position.segment: e.position.byte for e in journal.read()}
    assert journal.release(positions) == []  # ...and the segment holding them stays.
    monkeypatch.undo()
    assert journal.release(positions) == [bad.name]
    start, end = HEADER_SIZE, HEADER_SIZE + FRAME_SIZE + len(RECORDS[0])
    [saved] = journal.quarantined
    assert saved.name == hole_name(bad, start, end) and saved.read_bytes() == data[start:end]


@pytest.mark.parametrize(
    "leftover",
    [b"", HEADER[:5], bytes(64), HEADER[:3] + bytes(61), HEADER + bytes(56)],
    ids=["empty", "short header", "zero-filled", "short header then zeros", "header then zeros"],
)
def test_a_segment_left_unwritten_by_a_crash_is_removed(
    open_journal: Open, journal_dir: Path, leftover: bytes
) -> None:
    write_segment(journal_dir, "00000001-e0000000-rs-a.seg", [b"kept"])
    (journal_dir / "00000002-e0000000-rs-a.seg").write_bytes(leftover)
    journal = open_journal()
    names = sorted(p.name for p in journal_dir.glob("*.seg"))
    assert names[0] == "00000001-e0000000-rs-a.seg" and journal.quarantined == []
    assert datas(journal) == [b"kept"]
    assert journal.append_batch([b"x"]).segment > "00000002-"
    assert datas(journal) == [b"kept", b"x"]


def test_a_zero_filled_segment_of_a_live_writer_is_left_alone(
    open_journal: Open, journal_dir: Path
) -> None:
    fresh = write_segment(journal_dir, "00000001-e0000000-rs-b.seg", [])
    fresh.write_bytes(bytes(64))
    journal = open_journal(foreign_grace_s=60)
    assert fresh.read_bytes() == bytes(64) and datas(journal) == []
    journal.foreign_grace_s = 0.0
    age(fresh)
    assert datas(journal) == [] and not fresh.exists()


def test_a_live_writers_empty_new_segment_is_left_alone(
    open_journal: Open, journal_dir: Path
) -> None:
    private_dir(journal_dir)
    fresh = journal_dir / "00000001-e0000000-rs-b.seg"
    fresh.write_bytes(b"")
    journal = open_journal(foreign_grace_s=60)
    assert fresh.exists()
    assert datas(journal) == []
    assert journal.append_batch([b"x"]).segment.startswith("00000002-")


@pytest.mark.parametrize(
    "name, content",
    [("notes.txt", b"hello"), ("00000001.seg", HEADER)],
)
def test_a_foreign_file_is_a_clear_error_naming_it(
    journal_dir: Path, name: str, content: bytes
) -> None:
    private_dir(journal_dir)
    (journal_dir / name).write_bytes(content)
    with pytest.raises(ForeignFile) as caught:
        Journal(journal_dir, writer="rs-a")
    assert caught.value.path == str(journal_dir / name)
    assert str(journal_dir / name) in str(caught.value)
    assert (journal_dir / name).read_bytes() == content  # left untouched


@pytest.mark.parametrize("content", [b"PK\x03\x04 a zip file, not a segment", b"RSX"])
def test_a_segment_with_nothing_valid_in_it_is_quarantined_whole(
    open_journal: Open, journal_dir: Path, content: bytes
) -> None:
    write_segment(journal_dir, "00000001-e0000000-rs-a.seg", [b"kept"])
    path = journal_dir / "00000002-e0000000-rs-a.seg"
    path.write_bytes(content)
    journal = open_journal()
    assert journal.quarantined == [journal_dir / "quarantine" / path.name]
    assert journal.quarantined[0].read_bytes() == content
    assert datas(journal) == [b"kept"]


def test_a_foreign_directory_is_a_clear_error(journal_dir: Path) -> None:
    (private_dir(journal_dir) / "backup").mkdir()
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
    assert datas(journal) == RECORDS + RECORDS[1:]
    infos = {info.name: info for info in journal.segments()}
    assert infos["00000001-e0000000-rs-a.seg"].size - infos["00000001-e0000000-rs-a.seg"].end == 3
    damaged_info = infos["00000002-e0000000-rs-a.seg"]
    assert damaged_info.damaged and damaged_info.holes == (
        (HEADER_SIZE, HEADER_SIZE + FRAME_SIZE + len(RECORDS[0])),
    )
    journal.close()
    assert snapshot() == before


def test_a_segment_that_cannot_be_moved_is_skipped_not_fatal(
    open_journal: Open, journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = write_segment(journal_dir, "00000001-e0000000-rs-a.seg", [])
    bad.write_bytes(b"\xff" * 100)
    write_segment(journal_dir, "00000002-e0000000-rs-a.seg", [b"other"])

    def read_only_fs(src: object, dst: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "rename", read_only_fs)
    journal = open_journal()
    assert datas(journal) == [b"other"]
    assert bad.exists() and journal.quarantined == []
    monkeypatch.undo()
    assert datas(journal) == [b"other"]  # moved on the next look
    assert journal.quarantined == [journal_dir / "quarantine" / bad.name]


def test_a_stored_position_inside_later_damage_does_not_stop_the_drain(
    open_journal: Open, journal_dir: Path
) -> None:
    records = [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10]
    path = write_segment(journal_dir, "00000001-e0000000-rs-a.seg", records)
    write_segment(journal_dir, "00000002-e0000000-rs-a.seg", [b"newest"])
    frame = FRAME_SIZE + 10
    stored = HEADER_SIZE + 2 * frame  # "a" and "b" are in the database
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + frame + 3] ^= 0x01  # then "b" and "c" are damaged, one block
    data[HEADER_SIZE + 2 * frame + 3] ^= 0x01
    path.write_bytes(bytes(data))
    journal = open_journal()
    assert journal.release({path.name: stored}) == []
    assert journal.pending.records == 2  # "d" and "newest"
    assert datas(journal) == [b"a" * 10, b"d" * 10, b"newest"]
    assert [e.data for e in journal.read({path.name: stored})] == [b"d" * 10, b"newest"]
    assert journal.release({path.name: path.stat().st_size}) == [path.name]
