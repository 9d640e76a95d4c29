"""The disk journal: where every acknowledged report lives until it is in the database.

One class over ~850 lines, on purpose: appending, reading, releasing and recovery (with its holes
and quarantine copies) all change one table of segments under one lock, and its invariants (`end`
is checked from the header on, our open segment is never scanned, truncated or deleted) are easier
to keep in one place. The byte format is in record.py, naming and file operations in segment.py,
the writer lock in lock.py.

Durability policy
-----------------
- `append_batch` frames the whole batch into one buffer, writes it with one `pwrite` at the end
  of this writer's current segment and calls `fdatasync` before it returns. A new segment is
  written as header + first batch, `fdatasync`ed, and then its directory is `fsync`ed, so its
  name survives too. Once `append_batch` has returned, the batch survives kill -9 of the process
  and power loss (given a disk that honours flushes). A batch that was being written when the
  process died may be there in full, in part, or not at all; it was never acknowledged.
- On open, a torn tail (an incomplete or invalid last part with no valid record after it) is
  truncated back to the last valid record and the truncation is `fsync`ed; a segment that holds
  only part of a header and zeros (a crash right after creation) is removed. Both only in segments
  no live writer may still append to: our own, or another writer's untouched for
  `foreign_grace_s`. In a live writer's segment reading just stops at the last valid record.
- A checksum failure with valid records after it is damage, not a crash. Reading resumes at the
  next record whose length and CRC hold; the bytes in between (a hole) are copied to
  `quarantine/<segment>.bytes-<start>-<end>` (file and directory `fsync`ed), `on_quarantine` is
  called and a warning logged. Only the records in the hole are lost; the segment stays where
  it is, and is not released before its holes are in quarantine. A complete, non-zero last
  record whose CRC fails is damage too (a torn write leaves a prefix or zeros): its bytes go to
  quarantine before the tail is truncated. A segment whose header is damaged is read from its
  first valid record; one with no valid record at all is moved to `quarantine/` whole.
- The holes are found again by every open (the segment is never rewritten); the quarantine copy
  is made once. In a live writer's segment reading stops at damage until the segment is stale.
- `release` deletes a segment only when the position stored in the database is its last
  record, then `fsync`s the directory. A crash before that `fsync` may bring a deleted segment
  back; the drainer's stored position says it is drained, so nothing is stored twice.
- With `retain_s`, a drained segment is deleted only once it has been untouched that long, so
  that records a database lost after committing them (an asynchronous standby promoted) can be
  replayed. The cost is disk: about `retain_s` times the write rate.
- Segment names are never reused: the next sequence number is one past the highest in the
  directory and in `quarantine/`, and `release` always keeps the newest segment. A stored
  position therefore can never point into a different segment with the same name.
- Another writer's segment is deleted, truncated or cleaned up only after `foreign_grace_s`
  without a write: a fenced ex-active must have stopped appending well within that time.
- One process per writer name: an exclusive `flock` on `locks/<writer>.lock`, held while the
  journal is open, so two processes never append to one segment. Before an append returns, the
  segment must still be the file at its name: a segment deleted or replaced under its writer
  raises SegmentLost, and nothing of that batch may be acknowledged.
- When an append finds no room (max_bytes or a full disk) and every record of our open segment
  is drained, `release` closes that segment and frees it (the newest segment, kept so that
  names are never reused, is truncated to its header instead of deleted): draining can always
  make the room an append waits for.
- The directory is 0700 and every file 0600, whatever the umask; a directory open to group or
  others is refused, since segments hold the reports.
"""

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from storage.errors import (
    BadPosition,
    DiskFull,
    ForeignFile,
    JournalError,
    JournalExposed,
    JournalFull,
    SegmentLost,
)
from storage.journal.lock import LOCKS, WriterLock
from storage.journal.position import Position
from storage.journal.record import (
    HEADER,
    HEADER_SIZE,
    Hole,
    RecordReader,
    Stop,
    count_records,
    damaged_tail,
    encode_batch,
    find_record,
    pread_full,
    scan,
    unwritten,
)
from storage.journal.segment import (
    SegmentInfo,
    create_private,
    fsync_dir,
    make_private_dir,
    parse_name,
    quarantined_sequence,
    segment_name,
    validate_writer,
    write_all,
)

log = logging.getLogger(__name__)

QUARANTINE = "quarantine"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _ignored(name: str) -> bool:
    # Put there by file systems, not by people: a mount point's lost+found, and the .nfsXXXX name
    # NFS gives a file that one client deleted while another still had it open.
    return name == "lost+found" or name.startswith(".nfs")


class Entry(NamedTuple):
    """One record read back, and the position to store once it is in the database."""

    position: Position
    data: bytes


class Pending(NamedTuple):
    """Records and bytes (framing included) not yet drained into the database."""

    records: int
    bytes: int


@dataclass
class _Segment:
    name: str
    sequence: int
    epoch: int
    writer: str
    end: int = HEADER_SIZE  # byte after the last record checked from the header on
    records: int = 0
    drained_byte: int = HEADER_SIZE
    drained_records: int = 0
    damaged: bool = False  # read stops at `end` until the segment can be repaired
    quarantined: bool = False
    holes: list[Hole] = field(default_factory=list)  # read jumps over these
    unsaved: list[Hole] = field(default_factory=list)  # holes not yet copied to quarantine
    checked_size: int = 0  # the file size when last scanned


class Journal:
    """An append-only journal of segment files in one directory, shared by any number of
    writers, each appending only to its own segments.

    Thread-safe: one thread may append while another reads and releases.
    """

    def __init__(
        self,
        dir: str | Path,
        *,
        writer: str,
        epoch: int = 0,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 64 << 20,
        foreign_grace_s: float = 10.0,
        retain_s: float = 0.0,
        on_quarantine: Callable[[Path, str], None] | None = None,
        readonly: bool = False,
        held_lock: WriterLock | None = None,
        names_known: bool = True,
    ) -> None:
        self.dir = Path(dir)
        self.writer = validate_writer(writer)
        if epoch < 0:
            raise ValueError(f"epoch {epoch} is negative")
        if max_bytes <= 0 or segment_bytes <= HEADER_SIZE:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self.epoch = epoch
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.foreign_grace_s = foreign_grace_s
        self.retain_s = retain_s
        self.on_quarantine = on_quarantine
        self.readonly = readonly
        self._lock = threading.RLock()
        self._segments: dict[str, _Segment] = {}
        self._drained: dict[str, int] = {}
        self._warned: set[str] = set()
        self._current: _Segment | None = None
        self._fd: int | None = None
        self._writer_lock: WriterLock | None = None
        # The last append found no room: release may then free our open segment.
        self._starved = False
        self._closed = False
        if readonly:
            if not self.dir.is_dir():
                raise JournalError(f"journal {self.dir}: no such directory")
        else:
            self._make_dir()
            mode = os.stat(self.dir).st_mode & 0o777
            if mode & 0o077:
                raise JournalExposed(str(self.dir), mode)
        try:
            if not readonly:
                self._writer_lock = held_lock or WriterLock(self.dir, self.writer)
            # Segment names are (sequence, epoch, writer). A new epoch makes every name new; under
            # epoch 0 (standalone: every start writes under it) only the lock file's record of
            # the highest sequence does. A folder without it (made anew: wiped, a new disk) names
            # its segments blind, with no record kept, until `note_used` tells the names the
            # database knows: then the blind segments whose names may have been used are renamed
            # above them. `names_known` says there are none to know.
            self._blind = not (
                names_known
                or epoch > 0
                or (self._writer_lock is not None and self._writer_lock.highest > 0)
            )
            with self._lock:
                self._refresh(opening=True)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open_readonly(cls, dir: str | Path) -> "Journal":
        """Open for inspection: nothing in the directory is created, truncated, moved or deleted."""
        return cls(dir, writer="inspect", readonly=True)

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.dir)!r}, writer={self.writer!r}, epoch={self.epoch})"

    # -- appending ---------------------------------------------------------------------------

    def append_batch(self, records: Sequence[bytes]) -> Position:
        """Append `records` durably; returns the position after the last of them."""
        if not records:
            raise ValueError("append_batch needs at least one record")
        buf = encode_batch(records)
        with self._lock:
            self._check_writable()
            pending = self.pending.bytes
            if pending + len(buf) > self.max_bytes:
                self._starved = True
                raise JournalFull(pending, self.max_bytes)
            seg = self._current
            try:
                if seg is None or (seg.records and seg.end + len(buf) > self.segment_bytes):
                    seg = self._start_segment(buf)
                else:
                    self._write(seg, buf)
            except JournalFull:
                self._starved = True
                raise
            self._starved = False
            seg.records += len(records)
            seg.end += len(buf)
            seg.checked_size = seg.end
            self._check_still_there(seg)
            return Position(seg.name, seg.end)

    def _check_still_there(self, seg: _Segment) -> None:
        # A segment unlinked or replaced under us (an operator, a cleanup script, a second
        # process) takes the batch with it: it must not be acknowledged.
        assert self._fd is not None
        try:
            st = os.stat(self.dir / seg.name)
            ours = os.fstat(self._fd)
            there = (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino) and ours.st_nlink > 0
        except FileNotFoundError:
            there = False
        if not there:
            log.error(
                "journal %s: segment %s is gone; appends go to a new one",
                self.dir,
                seg.name,
                extra={"segment": seg.name},
            )
            self._retire_current()
            self._segments.pop(seg.name, None)
            raise SegmentLost(str(self.dir), seg.name)

    def _write(self, seg: _Segment, buf: bytes) -> None:
        assert self._fd is not None
        try:
            write_all(self._fd, buf, seg.end)
            os.fdatasync(self._fd)
        except OSError as exc:
            # With the disk full, take back what was partly written so the segment stays valid
            # to its end and can take the next batch. After any other failure (a failed fsync
            # above all) the state of the file is unknown: never write to it again.
            if exc.errno not in _DISK_FULL or not self._take_back(seg.end):
                self._retire_current()
            raise self._write_error(seg.name, exc) from exc

    def _take_back(self, end: int) -> bool:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, end)
            os.fdatasync(self._fd)
        except OSError:
            return False
        return True

    def _start_segment(self, buf: bytes) -> _Segment:
        self._made_anew_if_gone()
        sequence = self._next_sequence()
        while True:
            name = segment_name(sequence, self.epoch, self.writer)
            path = self.dir / name
            try:
                fd = create_private(path, os.O_WRONLY | os.O_EXCL)
            except FileExistsError:
                sequence += 1
                continue
            except OSError as exc:
                raise self._write_error(name, exc) from exc
            break
        try:
            write_all(fd, HEADER + buf, 0)
            os.fdatasync(fd)
            fsync_dir(self.dir)
        except OSError as exc:
            os.close(fd)
            try:
                os.unlink(path)
                fsync_dir(self.dir)
            except OSError:
                log.warning(
                    "journal %s: could not remove unfinished %s",
                    self.dir,
                    name,
                    extra={"segment": name},
                )
            raise self._write_error(name, exc) from exc
        self._retire_current()
        parsed = parse_name(name)
        assert parsed is not None
        if self._writer_lock is not None and not self._blind:
            try:
                self._writer_lock.note_sequence(parsed.sequence)
            except OSError as exc:
                log.warning("journal %s: cannot note sequence %d: %s", self.dir, sequence, exc)
        seg = _Segment(name, parsed.sequence, parsed.epoch, parsed.writer)
        self._segments[name] = seg
        self._current, self._fd = seg, fd
        return seg

    def _made_anew_if_gone(self) -> None:
        """The folder removed under the running writer (an operator, a cleanup job) is made anew,
        with the writer's lock taken again in it: appends and drains go on. What the folder held
        and the database had not stored is gone with it."""
        if self._writer_lock is None or self.dir.is_dir():
            return
        log.error(
            "journal %s was removed while in use; made anew (records in it that were not yet "
            "stored are lost)",
            self.dir,
        )
        self._make_dir()
        lock = WriterLock(self.dir, self.writer)  # JournalLocked if another took the name
        try:
            lock.note_sequence(self._writer_lock.highest)  # no name is handed out again
        except OSError as exc:
            lock.release()
            raise JournalError(f"journal {self.dir}: cannot write {lock.path}: {exc}") from None
        self._writer_lock.release()
        self._writer_lock = lock
        self._retire_current()

    def _make_dir(self) -> None:
        try:
            make_private_dir(self.dir)
        except OSError as exc:  # a file in its place, a parent not a directory, no right
            raise JournalError(
                f"journal {self.dir}: cannot make the directory: {exc.strerror}"
            ) from None

    def _retire_current(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._current, self._fd = None, None

    def _write_error(self, name: str, exc: OSError) -> JournalError:
        if exc.errno in _DISK_FULL:
            return DiskFull(str(self.dir), self.pending.bytes, self.max_bytes)
        return JournalError(f"journal {self.dir}: cannot write {name}: {exc.strerror}")

    def note_used(self, names: Iterable[str]) -> None:
        """Segment names used before (the database holds positions in them): new segments are
        numbered above them, even if this folder has never seen them."""
        highest = max((p.sequence for p in map(parse_name, names) if p), default=0)
        with self._lock:
            if self._blind:
                self._rename_blind(highest)
                # Recorded from here on: the names the database knows, and every one this
                # folder holds (renamed or not), the current segment's included.
                highest = max(highest, self._next_sequence() - 1)
                self._blind = False
            if self._writer_lock is not None and highest > self._writer_lock.highest:
                self._writer_lock.note_sequence(highest)

    def _rename_blind(self, used: int) -> None:
        """Renames the segments this writer named blind (see `__init__`) above sequence `used`,
        in their order, if any could bear a used name. The lock file keeps no record until this
        is done: a crash meanwhile leaves them blind."""
        own = sorted(
            (p.sequence, name)
            for name in os.listdir(self.dir)
            if (p := parse_name(name)) and p.writer == self.writer and p.epoch == self.epoch
        )
        if not own or own[0][0] > used:
            return
        self._retire_current()  # appends go to a new segment, named above these
        sequence = max(used, self._next_sequence() - 1)
        for _, name in own:
            sequence += 1
            new = segment_name(sequence, self.epoch, self.writer)
            os.rename(self.dir / name, self.dir / new)
            log.warning(
                "journal %s: segment %s renamed %s: this folder was made anew and the database "
                "holds positions in names like it",
                self.dir,
                name,
                new,
                extra={"segment": new},
            )
            seg = self._segments.pop(name, None)
            if seg is not None:
                seg.name, seg.sequence = new, sequence
                self._segments[new] = seg
        fsync_dir(self.dir)  # before the lock file records the names

    def _next_sequence(self) -> int:
        highest = self._writer_lock.highest if self._writer_lock is not None else 0
        if self._current is not None:
            highest = max(highest, self._current.sequence)
        for name in os.listdir(self.dir):
            parsed = parse_name(name)
            if parsed:
                highest = max(highest, parsed.sequence)
        quarantine = self.dir / QUARANTINE
        if quarantine.is_dir():
            for name in os.listdir(quarantine):
                highest = max(highest, quarantined_sequence(name) or 0)
        return highest + 1

    def _check_writable(self) -> None:
        if self._closed:
            raise JournalError(f"journal {self.dir} is closed")
        if self.readonly:
            raise JournalError(f"journal {self.dir} is open read-only")

    # -- reading -----------------------------------------------------------------------------

    def read(
        self, start: Mapping[str, int] | None = None, *, max_records: int | None = None
    ) -> Iterator[Entry]:
        """Records of every segment in the directory, in segment name order, each segment from
        `start[name]` (a byte just after a record; the beginning when absent)."""
        start = start or {}
        budget = max_records if max_records is not None else -1
        if budget == 0:
            return
        with self._lock:
            segments = [(seg, tuple(seg.holes)) for seg in self._refresh(opening=False)]
        new = tuple.__new__
        for seg, holes in segments:
            begin = max(start.get(seg.name, 0), HEADER_SIZE)
            limit = seg.end  # for our own open segment: the last acknowledged record
            if begin >= limit:
                continue
            try:
                fd = os.open(self.dir / seg.name, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # released or quarantined meanwhile
            name = seg.name
            try:
                reader = RecordReader(fd, begin, limit, holes=holes)
                for end, data in reader:
                    # tuple.__new__ skips the NamedTuple constructors: a third of the read time.
                    yield new(Entry, (new(Position, (name, end)), data))
                    budget -= 1
                    if budget == 0:
                        return
                if reader.stop is not Stop.END:
                    if not self._damaged_on_read(seg, fd, begin, reader.end):
                        continue
                    # The rest of this segment, past the damage just set aside.
                    with self._lock:
                        holes, limit = tuple(seg.holes), seg.end
                    if seg.damaged:
                        continue
                    reader = RecordReader(fd, reader.end, limit, holes=holes)
                    for end, data in reader:
                        yield new(Entry, (new(Position, (name, end)), data))
                        budget -= 1
                        if budget == 0:
                            return
            finally:
                os.close(fd)

    def _damaged_on_read(self, seg: _Segment, fd: int, begin: int, bad: int) -> bool:
        """Checks the segment again after a read failed inside its checked part; True when the
        damage was found and set aside. The file changed under us since it was checked, or the
        caller's position is not the end of a record."""
        with self._lock:
            first = next((h.end for h in seg.holes if h.start == 0), HEADER_SIZE)
            past = self._may_repair(seg, None, time.time())
            found = scan(fd, first, seg.end, past_damage=past)
            holes = list(found.holes)
            if found.stop is Stop.TORN:
                holes.append(Hole(found.end, seg.end))  # these records were valid before
            known = set(seg.holes)
            new = [h for h in holes if h not in known]
            if not new and found.stop is Stop.END:
                raise BadPosition(seg.name, begin)
            reason = f"checksum failure at byte {bad} found while reading"
            if seg is self._current:
                self._retire_current()  # the next batch goes to a fresh segment
            if found.stop is Stop.CORRUPT:
                # Another writer's live segment: reading stops there until it is stale.
                seg.end, seg.records, seg.damaged = found.end, found.records, True
                self._warn_damaged(seg, reason)
                return False
            drained = seg.drained_byte
            seg.holes = sorted(known | set(new))
            seg.unsaved += new
            seg.records = found.records
            seg.drained_byte, seg.drained_records = HEADER_SIZE, 0
            try:
                self._set_drained(seg, drained)
            except BadPosition:
                pass  # the drained position lay in what is now a hole: counted from the start
            self._save_holes(seg, reason)
            return True

    # -- releasing ---------------------------------------------------------------------------

    def release(self, drained: Mapping[str, int]) -> list[str]:
        """Delete the segments whose records are all in the database; `drained` maps a segment
        to the position stored there. Returns the names deleted (or, for the newest segment,
        emptied down to its header when an append is waiting for room)."""
        with self._lock:
            self._check_writable()
            self._drained.update(drained)
            segments = self._refresh(opening=False)
            for seg in segments:
                if seg.name in drained:
                    self._set_drained(seg, drained[seg.name])
            current = self._current
            if self._starved and current is not None and current.drained_byte == current.end:
                # An append waits for room and everything in our open segment is stored: close
                # it, so that it can be freed like any drained segment.
                self._retire_current()
            newest = max((seg.sequence, seg.name) for seg in segments)[1] if segments else None
            deleted: list[str] = []
            emptied = False
            now = time.time()
            for seg in segments:
                if (
                    seg.drained_byte != seg.end
                    or seg.damaged
                    or seg.unsaved
                    or seg is self._current
                    or (seg.name == newest and not self._starved)
                ):
                    continue
                path = self.dir / seg.name
                try:
                    mtime = path.stat().st_mtime
                    if seg.writer != self.writer and not self._stale(mtime, now):
                        continue
                    # Kept after draining, so that a database that loses its last commits
                    # (an asynchronous standby promoted) can be given them again.
                    if now - mtime < self.retain_s:
                        continue
                    if seg.name == newest:
                        # Kept so that its name is never handed out again; its bytes may go.
                        if seg.end > HEADER_SIZE and self._empty(seg, path):
                            deleted.append(seg.name)
                            emptied = True
                        continue
                    os.unlink(path)
                except FileNotFoundError:
                    pass  # the other writer released it first
                del self._segments[seg.name]
                self._drained.pop(seg.name, None)
                deleted.append(seg.name)
            if deleted:
                fsync_dir(self.dir)
                log.info(
                    "journal %s: released %d segment(s)",
                    self.dir,
                    len(deleted),
                    extra={"segment": ",".join(deleted)},
                )
            if emptied:
                log.info(
                    "journal %s: everything drained; freed the newest segment",
                    self.dir,
                    extra={"segment": newest},
                )
            return deleted

    def _empty(self, seg: _Segment, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            os.ftruncate(fd, HEADER_SIZE)
            os.fsync(fd)
        finally:
            os.close(fd)
        seg.end = seg.drained_byte = seg.checked_size = HEADER_SIZE
        seg.records = seg.drained_records = 0
        seg.holes = []
        self._drained.pop(seg.name, None)
        return True

    def _set_drained(self, seg: _Segment, byte: int) -> None:
        byte = max(byte, HEADER_SIZE)
        if byte == seg.drained_byte:
            return
        if byte >= seg.end:
            # Beyond what we have checked only while another writer's tail is still torn, or
            # after the segment was emptied.
            seg.drained_byte, seg.drained_records = seg.end, seg.records
            return
        base, count = (
            (seg.drained_byte, seg.drained_records) if byte > seg.drained_byte else (HEADER_SIZE, 0)
        )
        try:
            fd = os.open(self.dir / seg.name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            more = count_records(fd, base, byte, seg.holes)
        finally:
            os.close(fd)
        if more is None:
            raise BadPosition(seg.name, byte)
        seg.drained_byte, seg.drained_records = byte, count + more

    @property
    def pending(self) -> Pending:
        """Records and bytes not yet drained, as of the last `release`; no disk access."""
        records = size = 0
        for seg in list(self._segments.values()):
            drained = min(seg.drained_byte, seg.end)
            records += max(seg.records - seg.drained_records, 0)
            size += seg.end - drained
            for hole in seg.holes:
                size -= max(0, min(hole.end, seg.end) - max(hole.start, drained))
        return Pending(records, size)

    # -- the directory -----------------------------------------------------------------------

    def segments(self) -> list[SegmentInfo]:
        """Every segment in the directory, in log order, as it stands now."""
        with self._lock:
            segments = self._refresh(opening=False)
            out = []
            for seg in segments:
                try:
                    size = (self.dir / seg.name).stat().st_size
                except FileNotFoundError:
                    continue
                out.append(
                    SegmentInfo(
                        seg.name,
                        seg.writer,
                        seg.epoch,
                        size,
                        seg.records,
                        seg.sequence,
                        seg.end,
                        seg.damaged or bool(seg.unsaved),
                        tuple((h.start, h.end) for h in seg.holes),
                    )
                )
            return out

    @property
    def quarantined(self) -> list[Path]:
        quarantine = self.dir / QUARANTINE
        if not quarantine.is_dir():
            return []
        return sorted(p for p in quarantine.iterdir() if not p.name.startswith("."))

    def reopen(self, *, epoch: int) -> "Journal":
        """This journal written under `epoch` from now on: a new journal that takes the writer
        lock over without letting go of it, so that no process of the same name slips in."""
        with self._lock:
            self._retire_current()
            held, self._writer_lock = self._writer_lock, None
            self._closed = True
        return Journal(
            self.dir,
            writer=self.writer,
            epoch=epoch,
            max_bytes=self.max_bytes,
            segment_bytes=self.segment_bytes,
            foreign_grace_s=self.foreign_grace_s,
            retain_s=self.retain_s,
            on_quarantine=self.on_quarantine,
            readonly=self.readonly,
            held_lock=held,
            names_known=not self._blind,
        )

    def close(self) -> None:
        with self._lock:
            self._retire_current()
            if self._writer_lock is not None:
                self._writer_lock.release()
                self._writer_lock = None
            self._closed = True

    def _stale(self, mtime: float, now: float) -> bool:
        return now - mtime > self.foreign_grace_s

    def _refresh(self, *, opening: bool) -> list[_Segment]:
        """Bring what we know in line with the directory: forget segments that are gone, check
        new ones, and scan what other writers appended since. Returns segments in log order."""
        seen: set[str] = set()
        now = time.time()
        self._made_anew_if_gone()
        with os.scandir(self.dir) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                name = entry.name
                if name in (QUARANTINE, LOCKS) and entry.is_dir() or _ignored(name):
                    continue
                parsed = parse_name(name)
                if parsed is None or not entry.is_file(follow_symlinks=False):
                    self._foreign(Path(entry.path), "not a segment name", opening)
                    continue
                seen.add(name)
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    seen.discard(name)
                    continue
                seg = self._segments.get(name)
                if seg is None:
                    seg = _Segment(name, parsed.sequence, parsed.epoch, parsed.writer)
                    if not self._admit(seg, st.st_size, st.st_mtime, now, opening):
                        seen.discard(name)
                        continue
                    self._segments[name] = seg
                elif seg is self._current:
                    continue
                elif st.st_size != seg.checked_size or (
                    seg.damaged and self._may_repair(seg, st.st_mtime, now)
                ):
                    self._scan(seg, st.st_mtime, now, truncate=False)
                    if seg.quarantined:
                        seen.discard(name)
                elif seg.unsaved and self._may_repair(seg, st.st_mtime, now):
                    self._save_holes(seg, "damaged records")
        for name in list(self._segments):
            if name not in seen and self._segments[name] is not self._current:
                del self._segments[name]
        return sorted(self._segments.values(), key=lambda s: (s.sequence, s.name))

    def _admit(self, seg: _Segment, size: int, mtime: float, now: float, opening: bool) -> bool:
        path = self.dir / seg.name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            head = pread_full(fd, HEADER_SIZE, 0)
            first = HEADER_SIZE if head == HEADER else self._bad_header(seg, fd, size, mtime, now)
        finally:
            os.close(fd)
        if first is None:
            return False
        if head != HEADER:
            seg.holes.append(Hole(0, first))
            seg.unsaved.append(Hole(0, first))
            seg.end = first
        if size > seg.end:
            self._scan(seg, mtime, now, truncate=opening)
        else:
            seg.checked_size = size
            if seg.unsaved and (self.readonly or self._may_repair(seg, mtime, now)):
                self._save_holes(seg, "damaged header")
        if seg.quarantined:
            return False
        if seg.name in self._drained:
            self._set_drained(seg, self._drained[seg.name])
        return True

    def _bad_header(
        self, seg: _Segment, fd: int, size: int, mtime: float, now: float
    ) -> int | None:
        """Where the records of a segment without a valid header begin; None when it has none
        to read (it is then removed or quarantined once that is ours to do)."""
        path = self.dir / seg.name
        repair = self._may_repair(seg, mtime, now)
        if unwritten(fd, size):
            # Created by a writer that died before the header was on disk, or is writing it now.
            if repair:
                self._remove(path, "unfinished segment left by a crash")
            return None
        first = find_record(fd, HEADER_SIZE, size)
        if first is not None and (repair or self.readonly):
            return first
        if first is None and repair:
            self._quarantine(seg, "no valid header and no valid record")
        elif path.name not in self._warned:
            self._warned.add(path.name)
            log.warning(
                "journal %s: %s has a damaged header; left alone until its writer is quiet",
                self.dir,
                seg.name,
                extra={"segment": seg.name},
            )
        return None

    def _scan(self, seg: _Segment, mtime: float, now: float, *, truncate: bool) -> None:
        path = self.dir / seg.name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        # Past damage only where no writer may still be appending, or to show it (read-only).
        repair = self._may_repair(seg, mtime, now)
        try:
            size = os.fstat(fd).st_size
            found = scan(fd, seg.end, size, past_damage=repair or self.readonly)
            tail = found.stop is Stop.TORN and repair and damaged_tail(fd, found.end, size)
        finally:
            os.close(fd)
        seg.records += found.records
        seg.end = found.end
        seg.checked_size = size
        if found.stop is Stop.CORRUPT:
            seg.damaged = True
            self._warn_damaged(seg, f"checksum failure at byte {seg.end}, valid records after")
            return
        seg.damaged = False
        holes = found.holes + ([Hole(found.end, size)] if tail else [])
        known = set(seg.holes)
        fresh = [h for h in holes if h not in known]
        seg.holes += fresh
        seg.unsaved += fresh
        if seg.unsaved and (repair or self.readonly):
            self._save_holes(
                seg,
                "checksum failure, valid records after" if found.holes else "damaged last record",
            )
        if found.stop is Stop.TORN and truncate and repair and not seg.unsaved:
            self._truncate(path, seg.end, size)
            seg.checked_size = seg.end
            seg.holes = [h for h in seg.holes if h.start < seg.end]

    def _may_repair(self, seg: _Segment, mtime: float | None, now: float) -> bool:
        if self.readonly:
            return False
        if seg.writer == self.writer:
            return True
        if mtime is None:
            try:
                mtime = (self.dir / seg.name).stat().st_mtime
            except FileNotFoundError:
                return False
        return self._stale(mtime, now)

    def _warn_damaged(self, seg: _Segment, reason: str) -> None:
        key = f"damaged:{seg.name}:{seg.end}"
        if key not in self._warned:
            self._warned.add(key)
            log.warning(
                "journal %s: %s in %s; reading stops there until its writer is quiet",
                self.dir,
                reason,
                seg.name,
                extra={"segment": seg.name},
            )

    def _save_holes(self, seg: _Segment, reason: str) -> None:
        """Copies the bytes of each unsaved hole into quarantine/, once, durably."""
        for hole in list(seg.unsaved):
            if self._save_hole(seg, hole, reason):
                seg.unsaved.remove(hole)

    def _save_hole(self, seg: _Segment, hole: Hole, reason: str) -> bool:
        quarantine = self.dir / QUARANTINE
        target = quarantine / f"{seg.name}.bytes-{hole.start}-{hole.end}"
        size = hole.end - hole.start
        try:
            if target.is_file() and target.stat().st_size == size:
                return True  # saved by an earlier open: only the records around it are read
            if self.readonly:
                return False
            make_private_dir(quarantine)
            src = os.open(self.dir / seg.name, os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = pread_full(src, size, hole.start)
            finally:
                os.close(src)
            tmp = quarantine / f".{target.name}.{os.getpid()}.tmp"
            fd = create_private(tmp, os.O_WRONLY | os.O_TRUNC)
            try:
                write_all(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, target)
            fsync_dir(quarantine)
        except FileNotFoundError:
            return False  # released meanwhile by the other writer, which saw the hole too
        except OSError as exc:
            # A full or read-only disk must not stop the drain; the segment is kept until this
            # copy is made, so the bytes are not lost meanwhile. Tried again on every look.
            if f"save:{target.name}" not in self._warned:
                self._warned.add(f"save:{target.name}")
                log.error(
                    "journal %s: cannot quarantine %s: %s",
                    self.dir,
                    target.name,
                    exc,
                    extra={"segment": seg.name},
                )
            return False
        log.warning(
            "journal %s: %s: bytes %d-%d of %s set aside in %s; reading goes on after them",
            self.dir,
            reason,
            hole.start,
            hole.end,
            seg.name,
            target,
            extra={"segment": seg.name},
        )
        self._alarm(target, f"{reason}: bytes {hole.start}-{hole.end} of {seg.name}")
        return True

    def _alarm(self, path: Path, reason: str) -> None:
        if self.on_quarantine is not None:
            try:
                self.on_quarantine(path, reason)
            except Exception:
                log.exception("journal %s: on_quarantine failed", self.dir)

    def _quarantine(self, seg: _Segment, reason: str) -> None:
        quarantine = self.dir / QUARANTINE
        target = quarantine / seg.name
        suffix = 1
        while target.exists():
            target = quarantine / f"{seg.name}.{suffix}"
            suffix += 1
        try:
            make_private_dir(quarantine)
            os.rename(self.dir / seg.name, target)
            fsync_dir(quarantine)
            fsync_dir(self.dir)
        except FileNotFoundError:
            return  # another writer moved or released it first
        except OSError as exc:
            # A full or read-only disk must not stop the other segments from being drained.
            log.error(
                "journal %s: cannot quarantine %s: %s",
                self.dir,
                seg.name,
                exc,
                extra={"segment": seg.name},
            )
            return
        self._segments.pop(seg.name, None)
        self._drained.pop(seg.name, None)
        seg.damaged = seg.quarantined = True
        log.warning(
            "journal %s: quarantined %s: %s",
            self.dir,
            seg.name,
            reason,
            extra={"segment": seg.name},
        )
        self._alarm(target, reason)

    def _truncate(self, path: Path, end: int, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, end)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.warning(
            "journal %s: truncated torn tail of %s: %d bytes after byte %d",
            self.dir,
            path.name,
            size - end,
            end,
            extra={"segment": path.name},
        )

    def _remove(self, path: Path, reason: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        fsync_dir(self.dir)
        log.warning(
            "journal %s: removed %s: %s", self.dir, path.name, reason, extra={"segment": path.name}
        )

    def _foreign(self, path: Path, reason: str, opening: bool) -> None:
        if opening:
            raise ForeignFile(str(path))
        # Found while running: draining the segments must go on; say so once.
        if str(path) not in self._warned:
            self._warned.add(str(path))
            log.warning("journal %s: ignoring %s: %s", self.dir, path, reason)
