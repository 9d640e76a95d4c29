"""Shared-storage mode: an active and a stale ex-active with the same directory open."""

import os
import time
from collections.abc import Callable
from pathlib import Path

from storage.journal import Journal

Open = Callable[..., Journal]


def datas(journal: Journal) -> list[bytes]:
    return [entry.data for entry in journal.read()]


def age(path: Path, seconds: float = 3600) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_two_writers_never_share_a_file_and_each_reads_both(
    open_journal: Open, journal_dir: Path
) -> None:
    a = open_journal(writer="rs-a", epoch=1, segment_bytes=200)
    b = open_journal(writer="rs-b", epoch=2, segment_bytes=200)
    written: dict[str, list[bytes]] = {"rs-a": [], "rs-b": []}
    for i in range(30):
        for journal in (a, b) if i % 3 else (b, a):
            record = f"{journal.writer}:{i}".encode() * 5
            position = journal.append_batch([record])
            assert position.segment.endswith(f"-{journal.writer}.seg")
            written[journal.writer].append(record)
    for journal in (a, b):
        entries = list(journal.read())
        for writer in ("rs-a", "rs-b"):
            mine = [e.data for e in entries if e.position.segment.endswith(f"-{writer}.seg")]
            assert mine == written[writer]
        names = [e.position.segment for e in entries]
        assert names == sorted(names)  # name order is log order
    for path in journal_dir.glob("*.seg"):
        writer = "rs-a" if path.name.endswith("-rs-a.seg") else "rs-b"
        epoch = "e0000001" if writer == "rs-a" else "e0000002"
        assert f"-{epoch}-" in path.name


def test_records_another_writer_appends_after_open_are_seen(open_journal: Open) -> None:
    reader = open_journal(writer="rs-a")
    assert datas(reader) == []
    other = open_journal(writer="rs-b")
    other.append_batch([b"1"])
    assert datas(reader) == [b"1"]
    other.append_batch([b"2", b"3"])
    assert datas(reader) == [b"1", b"2", b"3"]
    assert reader.pending.records == 3


def test_another_writers_segment_is_released_only_after_the_grace_time(
    open_journal: Open, journal_dir: Path
) -> None:
    stale = open_journal(writer="rs-a", segment_bytes=64)
    first = stale.append_batch([b"x" * 40])
    stale.append_batch([b"y" * 40])  # rotates: first is no longer rs-a's open segment
    active = open_journal(writer="rs-b", foreign_grace_s=3600)
    drained = {e.position.segment: e.position.byte for e in active.read()}
    assert active.release(drained) == []
    assert (journal_dir / first.segment).exists()
    active.foreign_grace_s = 1.0
    age(journal_dir / first.segment)
    assert active.release(drained) == [first.segment]
    # rs-a's open segment is the newest in the directory: kept whatever its age.
    assert datas(active) == [b"y" * 40]
    assert datas(stale) == [b"y" * 40]
    assert stale.append_batch([b"z"]).segment != first.segment


def test_a_release_does_not_delete_records_appended_after_the_drain(
    open_journal: Open, journal_dir: Path
) -> None:
    other = open_journal(writer="rs-b", segment_bytes=64)
    position = other.append_batch([b"a"])
    active = open_journal(writer="rs-a", foreign_grace_s=0.0)
    active.append_batch([b"newest"])
    drained = {position.segment: position.byte}
    other.append_batch([b"b"])  # lands after the drainer's read, same segment
    age(journal_dir / position.segment)
    assert active.release(drained) == []
    assert [e.data for e in active.read(drained)] == [b"b", b"newest"]


def test_a_segment_released_by_the_other_writer_disappears_quietly(open_journal: Open) -> None:
    a = open_journal(writer="rs-a", segment_bytes=64)
    first = a.append_batch([b"x" * 40])
    a.append_batch([b"y" * 40])
    b = open_journal(writer="rs-b")
    assert b.pending.records == 2
    assert a.release({first.segment: first.byte}) == [first.segment]
    assert datas(b) == [b"y" * 40]
    assert b.pending.records == 1
