"""A journal folder made anew names its first segments blind (the database may hold positions in
names like them); once the database's names are told, those segments are renamed above them."""

import shutil
from pathlib import Path

import pytest

from storage.errors import SegmentLost
from storage.journal import Journal
from storage.journal.segment import segment_name


def name(sequence: int) -> str:
    return segment_name(sequence, 0, "rs-a")


def own_segments(journal_dir: Path) -> list[str]:
    return sorted(p.name for p in journal_dir.glob("*.seg"))


def test_blind_segments_are_renamed_above_the_names_the_database_knows(journal_dir: Path) -> None:
    journal = Journal(journal_dir, writer="rs-a", names_known=False)
    journal.append_batch([b"a", b"b"])
    assert own_segments(journal_dir) == [name(1)]
    journal.note_used([name(1), name(3)])  # positions the database holds, from the old folder
    assert own_segments(journal_dir) == [name(4)]
    assert [e.data for e in journal.read()] == [b"a", b"b"]
    assert journal.pending.records == 2
    journal.append_batch([b"c"])  # a new segment, above the renamed one
    assert own_segments(journal_dir) == [name(4), name(5)]
    assert [e.data for e in journal.read({name(4): 0})] == [b"a", b"b", b"c"]
    journal.close()
    # The lock file now records the names: a start with the database down is no longer blind.
    again = Journal(journal_dir, writer="rs-a", names_known=False)
    again.note_used([name(1), name(3)])
    assert own_segments(journal_dir) == [name(4), name(5)]
    again.close()


def test_blind_segments_above_every_known_name_keep_theirs(journal_dir: Path) -> None:
    with Journal(journal_dir, writer="rs-a", names_known=False) as journal:
        journal.append_batch([b"a"])
        journal.note_used([])  # a database that never saw this writer
        assert own_segments(journal_dir) == [name(1)]
        journal.append_batch([b"b"])
        assert [e.data for e in journal.read()] == [b"a", b"b"]


def test_a_restart_before_the_database_answered_is_still_blind(journal_dir: Path) -> None:
    """No record is kept while blind: a second start with the database still down goes on
    naming blind, above its own segments, and the names are settled when it answers."""
    first = Journal(journal_dir, writer="rs-a", names_known=False)
    first.append_batch([b"a"])
    first.close()
    second = Journal(journal_dir, writer="rs-a", names_known=False)
    second.append_batch([b"b"])
    assert own_segments(journal_dir) == [name(1), name(2)]
    second.note_used([name(2)])
    assert own_segments(journal_dir) == [name(3), name(4)]
    assert [e.data for e in second.read()] == [b"a", b"b"]
    second.close()


def test_a_journal_with_a_new_epoch_is_never_blind(journal_dir: Path) -> None:
    with Journal(journal_dir, writer="rs-a", epoch=3, names_known=False) as journal:
        journal.append_batch([b"a"])
        journal.note_used([segment_name(1, 3, "rs-a")])
        assert own_segments(journal_dir) == [segment_name(1, 3, "rs-a")]


def test_blind_names_are_recorded_once_the_database_answered(journal_dir: Path) -> None:
    """A database that never saw this writer renames nothing, but the blind names are recorded
    then: a folder removed under the writer afterwards never hands out one of them again."""
    journal = Journal(journal_dir, writer="rs-a", names_known=False)
    journal.append_batch([b"a"])
    journal.note_used([])
    shutil.rmtree(journal_dir)
    with pytest.raises(SegmentLost):  # the batch in hand went with the folder: not acked
        journal.append_batch([b"b"])
    journal.append_batch([b"b"])
    assert own_segments(journal_dir) == [name(2)]
    journal.close()
