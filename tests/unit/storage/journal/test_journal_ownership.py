"""Who may write a journal directory, and what it may be read by: one process per writer name,
a segment removed under its writer, the directory's and the files' modes."""

import fcntl
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.errors import JournalExposed, JournalLocked, SegmentLost
from storage.journal import Journal
from storage.journal.lock import TAKE_WAIT_S, held_by_others

Open = Callable[..., Journal]

HOLD = textwrap.dedent(
    """
    import sys
    from storage.journal import Journal
    journal = Journal(sys.argv[1], writer=sys.argv[2])
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def test_a_second_process_with_the_same_writer_name_is_refused_naming_the_first(
    journal_dir: Path,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(journal_dir), "rs-a"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        with pytest.raises(JournalLocked) as caught:
            Journal(journal_dir, writer="rs-a")
        assert caught.value.pid == holder.pid
        assert f"pid {holder.pid}" in str(caught.value)
        # Another name on the same directory is another writer: allowed (shared storage).
        Journal(journal_dir, writer="rs-b").close()
    finally:
        holder.communicate("")
    # The lock goes with the process: the name is free again.
    Journal(journal_dir, writer="rs-a").close()


def test_the_lock_is_released_by_close(open_journal: Open, journal_dir: Path) -> None:
    first = open_journal()
    with pytest.raises(JournalLocked, match=f"pid {os.getpid()}"):
        Journal(journal_dir, writer="rs-a")
    first.close()
    open_journal().append_batch([b"x"])


def test_a_segment_removed_under_its_writer_is_not_acknowledged(
    open_journal: Open, journal_dir: Path
) -> None:
    journal = open_journal()
    first = journal.append_batch([b"a"])
    (journal_dir / first.segment).unlink()
    with pytest.raises(SegmentLost) as caught:
        journal.append_batch([b"b"])
    assert caught.value.segment == first.segment
    # The next batch (the same one, redelivered) goes to a new segment and is read back.
    again = journal.append_batch([b"b"])
    assert again.segment != first.segment
    assert [e.data for e in journal.read()] == [b"b"]


def test_a_segment_replaced_under_its_writer_is_not_acknowledged(
    open_journal: Open, journal_dir: Path
) -> None:
    journal = open_journal()
    first = journal.append_batch([b"a"])
    path = journal_dir / first.segment
    copy = path.with_name("copy")
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)  # e.g. restored from a backup while the writer runs
    with pytest.raises(SegmentLost):
        journal.append_batch([b"b"])
    journal.append_batch([b"c"])
    assert [e.data for e in journal.read()] == [b"a", b"c"]


def test_directory_and_files_are_private_whatever_the_umask(journal_dir: Path) -> None:
    old = os.umask(0)
    try:
        with Journal(journal_dir, writer="rs-a", segment_bytes=64) as journal:
            journal.append_batch([b"x" * 60])
            journal.append_batch([b"y" * 60])
    finally:
        os.umask(old)
    assert stat.S_IMODE(journal_dir.stat().st_mode) == 0o700
    paths = list(journal_dir.rglob("*"))
    assert len(list(journal_dir.glob("*.seg"))) == 2
    for path in paths:
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701])
def test_a_directory_open_to_others_is_refused(journal_dir: Path, mode: int) -> None:
    journal_dir.mkdir()
    os.chmod(journal_dir, mode)
    with pytest.raises(JournalExposed) as caught:
        Journal(journal_dir, writer="rs-a")
    assert f"{mode:04o}" in str(caught.value) and "chmod 700" in str(caught.value)
    assert list(journal_dir.iterdir()) == []  # nothing written, no lock taken
    Journal.open_readonly(journal_dir).close()  # inspecting it is still allowed


def test_reopening_under_a_new_epoch_keeps_the_writer_lock(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", writer="rs-a", epoch=1)
    journal.append_batch([b"one"])
    reopened = journal.reopen(epoch=2)
    try:
        # No moment without the lock: a second process (here, a second open) is refused.
        with pytest.raises(JournalLocked):
            Journal(tmp_path / "j", writer="rs-a")
        reopened.append_batch([b"two"])
        assert any(s.name.endswith("-e0000002-rs-a.seg") for s in reopened.segments())
    finally:
        reopened.close()
    Journal(tmp_path / "j", writer="rs-a").close()


def test_the_writers_of_other_names_holding_the_journal_are_told(journal_dir: Path) -> None:
    """What replay asks before it drains a shared journal as one instance: which other names a
    living process writes under, with its pid; free names, and its own, are not told."""
    Journal(journal_dir, writer="rs-gone").close()  # a lock file nobody holds
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(journal_dir), "rs-a"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        assert held_by_others(journal_dir, "rs-b") == [("rs-a", holder.pid)]
        assert held_by_others(journal_dir, "rs-a") == []
        # The look took nothing from the holder, nor from a free name's next writer.
        Journal(journal_dir, writer="rs-gone").close()
        assert held_by_others(journal_dir, "rs-b") == [("rs-a", holder.pid)]
    finally:
        holder.communicate("")
    assert held_by_others(journal_dir, "rs-b") == []
    assert held_by_others(journal_dir / "missing", "rs-b") == []


LOOK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from storage.journal.lock import held_by_others
    print("ready", flush=True)
    for _ in range(int(sys.argv[3])):
        held_by_others(Path(sys.argv[1]), sys.argv[2])
    """
)


def test_a_start_while_a_look_holds_its_lock_for_a_moment_waits_for_it(journal_dir: Path) -> None:
    """A look (replay's, check-config's) takes a lock for a moment; a start in that instant waits
    for it, where it was refused as if its name ran."""
    Journal(journal_dir, writer="rs-a").close()
    fd = os.open(journal_dir / "locks" / "rs-a.lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # what the look does
    threading.Timer(0.2, os.close, [fd]).start()  # and its moment ends
    began = time.monotonic()
    Journal(journal_dir, writer="rs-a").close()
    assert time.monotonic() - began >= 0.15


def test_a_lock_held_past_the_wait_is_refused(journal_dir: Path) -> None:
    Journal(journal_dir, writer="rs-a").close()
    fd = os.open(journal_dir / "locks" / "rs-a.lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        began = time.monotonic()
        with pytest.raises(JournalLocked):
            Journal(journal_dir, writer="rs-a")
        assert time.monotonic() - began >= TAKE_WAIT_S
    finally:
        os.close(fd)


def test_starts_beside_looks_in_a_tight_loop_are_never_refused(journal_dir: Path) -> None:
    """Replay's look at the other names, in a loop in another process, while rs-a starts and
    stops 200 times: every start takes its lock."""
    Journal(journal_dir, writer="rs-a").close()
    looker = subprocess.Popen(
        [sys.executable, "-c", LOOK, str(journal_dir), "rs-b", "10000000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert looker.stdout is not None and looker.stdout.readline() == "ready\n"
        for _ in range(200):
            Journal(journal_dir, writer="rs-a").close()
        assert looker.poll() is None  # it looked all along
    finally:
        looker.kill()
        looker.wait()
