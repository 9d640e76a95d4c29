"""Every pause can end: when an append finds no room and everything journalled is drained,
release frees the open segment, so draining always makes the room an append waits for."""

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.errors import DiskFull, JournalFull
from storage.journal import Journal, Pending
from storage.journal import journal as journal_module
from storage.journal.record import HEADER_SIZE

Open = Callable[..., Journal]


def drain(journal: Journal, positions: dict[str, int]) -> list[bytes]:
    entries = list(journal.read(positions))
    positions.update({e.position.segment: e.position.byte for e in entries})
    return [e.data for e in entries]


def fill_the_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Every journal write meets ENOSPC from now on; returns what gives the room back."""
    real_write_all = journal_module.write_all

    def enospc(fd: int, data: bytes, pos: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module, "write_all", enospc)
    return lambda: monkeypatch.setattr(journal_module, "write_all", real_write_all)


def test_a_full_disk_with_everything_drained_frees_the_open_segment(
    open_journal: Open, journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = open_journal()
    first = journal.append_batch([b"a" * 1000])
    room_again = fill_the_disk(monkeypatch)
    with pytest.raises(DiskFull):
        journal.append_batch([b"b"])
    positions: dict[str, int] = {}
    assert drain(journal, positions) == [b"a" * 1000]
    # The open segment is the newest: kept for its name, emptied down to its header.
    assert journal.release(positions) == [first.segment]
    assert (journal_dir / first.segment).stat().st_size == HEADER_SIZE
    assert journal.pending == Pending(0, 0)
    room_again()
    after = journal.append_batch([b"b"])
    assert after.segment > first.segment
    assert drain(journal, positions) == [b"b"]
    # The emptied segment goes once it is no longer the newest.
    assert journal.release(positions) == [first.segment]
    assert sorted(p.name for p in journal_dir.glob("*.seg")) == [after.segment]
    journal.close()
    # Reopened with the stored positions, nothing is read twice.
    assert drain(open_journal(), positions) == []


def test_a_full_disk_waits_for_the_drain_before_freeing_anything(
    open_journal: Open, journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = open_journal()
    journal.append_batch([b"a"])
    second = journal.append_batch([b"b"])
    room_again = fill_the_disk(monkeypatch)
    with pytest.raises(DiskFull):
        journal.append_batch([b"c"])
    positions: dict[str, int] = {}
    entries = list(journal.read(max_records=1))
    positions[entries[0].position.segment] = entries[0].position.byte
    assert journal.release(positions) == []  # "b" is not stored yet: nothing may go
    assert (journal_dir / second.segment).stat().st_size == second.byte
    room_again()
    journal.append_batch([b"c"])  # room again: the open segment goes on
    assert journal.append_batch([b"d"]).segment == second.segment


def test_max_bytes_reached_then_drained_lets_appends_go_on(open_journal: Open) -> None:
    journal = open_journal(max_bytes=100)
    journal.append_batch([b"x" * 80])
    with pytest.raises(JournalFull):
        journal.append_batch([b"y" * 40])
    positions: dict[str, int] = {}
    drain(journal, positions)
    journal.release(positions)
    journal.append_batch([b"y" * 40])
    assert drain(journal, positions) == [b"y" * 40]


def test_without_a_waiting_append_the_newest_segment_is_kept_whole(
    open_journal: Open, journal_dir: Path
) -> None:
    journal = open_journal()
    first = journal.append_batch([b"a"])
    positions: dict[str, int] = {}
    drain(journal, positions)
    assert journal.release(positions) == []
    assert (journal_dir / first.segment).stat().st_size == first.byte


def test_retained_segments_are_not_freed_before_their_time(
    open_journal: Open, journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = open_journal(retain_s=3600)
    first = journal.append_batch([b"a"])
    fill_the_disk(monkeypatch)
    with pytest.raises(DiskFull):
        journal.append_batch([b"b"])
    positions: dict[str, int] = {}
    drain(journal, positions)
    assert journal.release(positions) == []
    then = os.stat(journal_dir / first.segment).st_mtime - 7200
    os.utime(journal_dir / first.segment, (then, then))
    assert journal.release(positions) == [first.segment]
