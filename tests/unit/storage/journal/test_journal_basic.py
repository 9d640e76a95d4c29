import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.errors import BadPosition, DiskFull, JournalError, JournalFull
from storage.journal import Journal, Pending, Position
from storage.journal import journal as journal_module
from storage.journal.record import FRAME_SIZE, HEADER_SIZE

Open = Callable[..., Journal]


def datas(journal: Journal, start: dict[str, int] | None = None) -> list[bytes]:
    return [entry.data for entry in journal.read(start)]


def test_append_then_read_returns_the_records_in_order(open_journal: Open) -> None:
    journal = open_journal()
    first = journal.append_batch([b"a", b"bb"])
    second = journal.append_batch([b"", b"ccc" * 1000])
    assert first.segment == second.segment == "00000001-e0000000-rs-a.seg"
    assert first.byte == HEADER_SIZE + 2 * FRAME_SIZE + 3
    entries = list(journal.read())
    assert [e.data for e in entries] == [b"a", b"bb", b"", b"ccc" * 1000]
    assert entries[1].position == first
    assert entries[-1].position == second


def test_segment_name_carries_sequence_epoch_and_writer(open_journal: Open, journal_dir: Path):
    journal = open_journal(writer="rs-b.2", epoch=7)
    position = journal.append_batch([b"x"])
    assert position.segment == "00000001-e0000007-rs-b.2.seg"
    assert (journal_dir / position.segment).is_file()
    [info] = journal.segments()
    assert (info.writer, info.epoch, info.records, info.size) == ("rs-b.2", 7, 1, position.byte)


@pytest.mark.parametrize("writer", ["", "../x", "a/b", "-lead", "x" * 65, "sp ace", "é"])
def test_unsafe_writer_names_are_refused(journal_dir: Path, writer: str) -> None:
    with pytest.raises(ValueError, match="writer name"):
        Journal(journal_dir, writer=writer)


def test_read_starts_after_the_given_position(open_journal: Open) -> None:
    journal = open_journal()
    journal.append_batch([b"1", b"2"])
    middle = journal.append_batch([b"3"])
    journal.append_batch([b"4", b"5"])
    assert datas(journal, {middle.segment: middle.byte}) == [b"4", b"5"]
    assert datas(journal, {"00000099-e0000000-gone.seg": 40}) == [b"1", b"2", b"3", b"4", b"5"]


def test_max_records_bounds_a_read(open_journal: Open) -> None:
    journal = open_journal()
    journal.append_batch([bytes([i]) for i in range(10)])
    assert [e.data for e in journal.read(max_records=3)] == [b"\x00", b"\x01", b"\x02"]
    assert list(journal.read(max_records=0)) == []


def test_a_position_inside_a_record_is_refused(open_journal: Open) -> None:
    journal = open_journal()
    position = journal.append_batch([b"hello world", b"again"])
    with pytest.raises(BadPosition):
        list(journal.read({position.segment: HEADER_SIZE + 3}))
    assert datas(journal) == [b"hello world", b"again"]  # and nothing was quarantined


def test_segments_rotate_and_a_batch_never_spans_two(open_journal: Open) -> None:
    journal = open_journal(segment_bytes=300)
    positions = [journal.append_batch([b"r" * 50, b"s" * 50]) for _ in range(5)]
    names = [p.segment for p in positions]
    assert names == sorted(names)
    # A batch is 116 bytes, the header 8: two batches fit in 300 bytes, a third does not.
    assert [name[:8] for name in names] == ["00000001"] * 2 + ["00000002"] * 2 + ["00000003"]
    big = journal.append_batch([b"z" * 1000])  # larger than a segment: alone in a new one
    assert big.segment not in names
    assert len(datas(journal)) == 11
    for info in journal.segments():
        assert info.size == info.end
        assert info.size <= 300 or info.name == big.segment


def test_reopen_continues_in_a_new_segment_and_keeps_every_record(open_journal: Open) -> None:
    journal = open_journal()
    journal.append_batch([b"one"])
    journal.close()
    again = open_journal()
    position = again.append_batch([b"two"])
    assert position.segment.startswith("00000002-")
    assert datas(again) == [b"one", b"two"]


def test_pending_counts_records_and_bytes_not_yet_drained(open_journal: Open) -> None:
    journal = open_journal()
    assert journal.pending == Pending(0, 0)
    first = journal.append_batch([b"aaaa", b"bb"])
    journal.append_batch([b"c"])
    assert journal.pending == Pending(3, 3 * FRAME_SIZE + 7)
    journal.release({first.segment: first.byte})
    assert journal.pending == Pending(1, FRAME_SIZE + 1)


def test_release_deletes_drained_segments_only(open_journal: Open, journal_dir: Path) -> None:
    journal = open_journal(segment_bytes=64)
    a = journal.append_batch([b"a" * 40])
    b = journal.append_batch([b"b" * 40])
    c = journal.append_batch([b"c" * 40])
    assert len({a.segment, b.segment, c.segment}) == 3
    # b is drained only in part: not deleted; c is our open segment: never deleted.
    assert journal.release({a.segment: a.byte, b.segment: HEADER_SIZE, c.segment: c.byte}) == [
        a.segment
    ]
    assert not (journal_dir / a.segment).exists()
    assert datas(journal) == [b"b" * 40, b"c" * 40]
    assert journal.pending == Pending(1, FRAME_SIZE + 40)
    assert journal.release({b.segment: b.byte}) == [b.segment]
    assert journal.pending == Pending(0, 0)


def test_release_keeps_the_newest_segment_so_names_are_never_reused(
    open_journal: Open, journal_dir: Path
) -> None:
    journal = open_journal()
    a = journal.append_batch([b"a"])
    journal.close()
    reopened = open_journal()
    assert reopened.release({a.segment: a.byte}) == []  # the newest in the directory
    b = reopened.append_batch([b"b"])
    assert reopened.release({a.segment: a.byte, b.segment: b.byte}) == [a.segment]
    reopened.close()
    # Only b is left, drained; a new journal must not hand out a's or b's name again.
    last = open_journal()
    assert last.release({b.segment: b.byte}) == []
    c = last.append_batch([b"c"])
    assert c.segment > b.segment > a.segment
    assert datas(last, {b.segment: b.byte}) == [b"c"]


def test_release_forgets_and_counts_from_a_stored_position_after_reopen(open_journal: Open):
    journal = open_journal()
    journal.append_batch([b"1", b"2"])
    middle = journal.append_batch([b"3"])
    journal.append_batch([b"4"])
    journal.close()
    again = open_journal()
    assert again.pending.records == 4  # nothing is known to be drained yet
    again.release({middle.segment: middle.byte})
    assert again.pending == Pending(1, FRAME_SIZE + 1)
    # A position moving back (a database restored from an older backup) counts again.
    again.release({middle.segment: HEADER_SIZE})
    assert again.pending.records == 4


def test_release_refuses_a_position_inside_a_record(open_journal: Open) -> None:
    journal = open_journal()
    position = journal.append_batch([b"abcdef", b"g"])
    with pytest.raises(BadPosition):
        journal.release({position.segment: HEADER_SIZE + 2})


def test_append_past_max_bytes_raises_journal_full(open_journal: Open) -> None:
    journal = open_journal(max_bytes=100)
    position = journal.append_batch([b"x" * 40])  # 48 bytes pending
    journal.append_batch([b"x" * 40])  # 96
    with pytest.raises(JournalFull) as caught:
        journal.append_batch([b"y"])  # 96 + 9 > 100
    assert (caught.value.pending_bytes, caught.value.max_bytes) == (96, 100)
    assert len(list(journal.read())) == 2
    journal.release({position.segment: position.byte})
    journal.append_batch([b"y"])  # room again once drained
    assert journal.pending == Pending(2, 48 + 9)


def test_disk_full_during_a_write_leaves_the_segment_as_it_was(
    open_journal: Open, journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = open_journal()
    acked = journal.append_batch([b"kept"])
    real_write_all = journal_module.write_all

    def half_then_enospc(fd: int, data: bytes, pos: int) -> None:
        os.pwrite(fd, data[: len(data) // 2], pos)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module, "write_all", half_then_enospc)
    with pytest.raises(DiskFull) as caught:
        journal.append_batch([b"lost" * 100])
    assert isinstance(caught.value, JournalFull)
    assert (journal_dir / acked.segment).stat().st_size == acked.byte
    monkeypatch.setattr(journal_module, "write_all", real_write_all)
    after = journal.append_batch([b"next"])
    assert after.segment == acked.segment
    assert datas(journal) == [b"kept", b"next"]


def test_disk_full_when_creating_a_segment_leaves_no_file(
    open_journal: Open, journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = open_journal()

    def enospc(fd: int, data: bytes, pos: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module, "write_all", enospc)
    with pytest.raises(DiskFull):
        journal.append_batch([b"x"])
    assert list(journal_dir.glob("*.seg")) == []


def test_a_failed_fsync_moves_the_next_batch_to_a_new_segment(
    open_journal: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = open_journal()
    first = journal.append_batch([b"a"])

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal_module.os, "fdatasync", eio)
    with pytest.raises(JournalError) as caught:
        journal.append_batch([b"b"])
    assert not isinstance(caught.value, JournalFull)
    monkeypatch.undo()
    second = journal.append_batch([b"c"])
    assert second.segment != first.segment
    # b reached the page cache: it may be read (never acknowledged, stored once by report id).
    assert datas(journal) in ([b"a", b"c"], [b"a", b"b", b"c"])


def test_closed_and_read_only_journals_refuse_to_write(open_journal: Open, journal_dir: Path):
    journal = open_journal()
    position = journal.append_batch([b"x"])
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.append_batch([b"y"])
    inspector = Journal.open_readonly(journal_dir)
    with pytest.raises(JournalError, match="read-only"):
        inspector.append_batch([b"y"])
    with pytest.raises(JournalError, match="read-only"):
        inspector.release({position.segment: position.byte})
    assert datas(inspector) == [b"x"]


def test_empty_batch_is_refused(open_journal: Open) -> None:
    with pytest.raises(ValueError):
        open_journal().append_batch([])


def test_position_is_the_stored_form(open_journal: Open) -> None:
    position = open_journal().append_batch([b"x"])
    assert position == Position(position.segment, position.byte)
    assert isinstance(position.byte, int)
