"""One process per writer name: an exclusive flock on `<journal>/locks/<writer>.lock`.

Two processes appending to one segment would interleave records; so would two that both hand
out the next sequence number. The lock is held while the journal is open and goes with the
process (kill -9 included). The file also says who holds it, for the one that is refused, and
the highest sequence number the writer has used, so that a name is not handed out again even
after its segment was deleted from under it.
"""

import errno
import fcntl
import logging
import os
import stat
import time
from pathlib import Path

from storage.errors import JournalError, JournalLocked
from storage.journal.record import pread_full
from storage.journal.segment import create_private, make_private_dir

log = logging.getLogger(__name__)

LOCKS = "locks"
_SIZE = 64


# How long a start waits for its lock while another holds it: a look (replay's `held_by_others`,
# `check-config --local`) holds a lock for a moment, and a start in that instant must not be
# refused as if its name ran; a running writer holds it for good and is told after this.
TAKE_WAIT_S = 1.0
_TAKE_POLL_S = 0.01


class WriterLock:
    """Taken on creation (JournalLocked if another process holds it for `TAKE_WAIT_S`); `release`
    lets go."""

    def __init__(self, dir: Path, writer: str) -> None:
        self.path = dir / LOCKS / f"{writer}.lock"
        try:
            make_private_dir(self.path.parent)
            fd = create_private(self.path, os.O_RDWR)
        except OSError as exc:
            raise JournalError(f"journal {dir}: cannot open {self.path}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a pipe, a device: no lock file of ours
            os.close(fd)
            raise JournalError(f"journal {dir}: {self.path} is not a regular file")
        try:
            _take(fd)
        except BlockingIOError:
            words = pread_full(fd, _SIZE, 0).decode("ascii", "replace").split()
            os.close(fd)
            pid = int(words[0]) if words and words[0].isdigit() else None
            raise JournalLocked(str(dir), writer, pid) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                os.close(fd)
                raise JournalError(f"journal {dir}: cannot lock {self.path}: {exc}") from None
            # Some network file systems have no locks: run, but say what is not guarded.
            log.warning(
                "journal %s: no file locks here (%s); a second process named %r is not refused",
                dir,
                exc.strerror,
                writer,
            )
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        words = pread_full(fd, _SIZE, 0).decode("ascii", "replace").split()
        self.highest = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
        try:
            self._write()
        except OSError as exc:
            self.release()
            raise JournalError(f"journal {dir}: cannot write {self.path}: {exc.strerror}") from None

    def note_sequence(self, sequence: int) -> None:
        """Remembers `sequence` as used (durably) if it is the highest so far."""
        if sequence > self.highest:
            self.highest = sequence
            self._write()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # and with it the flock
            self._fd = None

    def _write(self) -> None:
        assert self._fd is not None
        text = f"{os.getpid()}\n{self.highest}\n".encode().ljust(_SIZE)
        os.pwrite(self._fd, text, 0)
        os.fdatasync(self._fd)


def _take(fd: int) -> None:
    """An exclusive flock on `fd`, tried until `TAKE_WAIT_S` has passed (BlockingIOError then)."""
    deadline = time.monotonic() + TAKE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(_TAKE_POLL_S)


def held_by_others(dir: Path, writer: str) -> list[tuple[str, int | None]]:
    """The writer names other than `writer` whose lock on the journal `dir` a process holds now,
    each with the pid its file names. A look that takes each free lock shared for a moment; a
    process starting as that writer in the same instant waits for it (see `TAKE_WAIT_S`)."""
    held = []
    try:
        paths = sorted((dir / LOCKS).glob("*.lock"))
    except OSError as exc:  # glob skips what is missing, not what it may not read
        raise JournalError(f"journal {dir}: cannot read {dir / LOCKS}: {exc.strerror}") from None
    for path in paths:
        name = path.name.removesuffix(".lock")
        if name == writer:
            continue
        try:
            # Not a link, and not waiting on a pipe that has no writer: only a lock file counts.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # gone since, a link, or not ours to read: no writer of ours holds it
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            words = pread_full(fd, _SIZE, 0).decode("ascii", "replace").split()
            held.append((name, int(words[0]) if words and words[0].isdigit() else None))
        except OSError:
            pass  # no file locks here (see WriterLock): nothing to tell
        finally:
            os.close(fd)  # and with it the shared lock, if taken
    return held
