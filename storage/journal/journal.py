"""The disk journal: where every acknowledged report lives until it is in the database.

One class over ~600 lines, on purpose: appending, reading, releasing and recovery all change one
table of segments under one lock, and its invariants (`end` is checked from the header on, our
open segment is never scanned, truncated or deleted) are easier to keep in one place. The byte
format is in record.py, naming and file operations in segment.py.

Durability policy
-----------------
- `append_batch` frames the whole batch into one buffer, writes it with one `pwrite` at the end
  of this writer's current segment and calls `fdatasync` before it returns. A new segment is
  written as header + first batch, `fdatasync`ed, and then its directory is `fsync`ed, so its
  name survives too. Once `append_batch` has returned, the batch survives kill -9 of the process
  and power loss (given a disk that honours flushes). A batch that was being written when the
  process died may be there in full, in part, or not at all; it was never acknowledged.
- On open, a torn tail (an incomplete or invalid last part with no valid record after it) is
  truncated back to the last valid record and the truncation is `fsync`ed; a zero-length or
  half-written header left by a crash right after creation is removed. Both only in segments
  no live writer may still append to: our own, or another writer's untouched for
  `foreign_grace_s`. In a live writer's segment reading just stops at the last valid record.
- A checksum failure with valid records after it is damage, not a crash: the segment is moved
  to `quarantine/` (both directories `fsync`ed), `on_quarantine` is called and a warning logged.
  The other segments are still read. The quarantined file is kept whole for the operator.
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
"""

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from storage.errors import BadPosition, DiskFull, ForeignFile, JournalError, JournalFull
from storage.journal.position import Position
from storage.journal.record import (
    HEADER,
    HEADER_SIZE,
    RecordReader,
    Stop,
    count_records,
    encode_batch,
    pread_full,
)
from storage.journal.segment import (
    SegmentInfo,
    fsync_dir,
    is_partial_header,
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
    damaged: bool = False  # read stops at `end` until the segment can be quarantined
    quarantined: bool = False


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
        self._closed = False
        if readonly:
            if not self.dir.is_dir():
                raise JournalError(f"journal {self.dir}: no such directory")
        elif not self.dir.is_dir():
            self.dir.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.dir.parent)
        with self._lock:
            self._refresh(opening=True)

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
                raise JournalFull(pending, self.max_bytes)
            seg = self._current
            if seg is None or (seg.records and seg.end + len(buf) > self.segment_bytes):
                seg = self._start_segment(buf)
            else:
                self._write(seg, buf)
            seg.records += len(records)
            seg.end += len(buf)
            return Position(seg.name, seg.end)

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
        sequence = self._next_sequence()
        while True:
            name = segment_name(sequence, self.epoch, self.writer)
            path = self.dir / name
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
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
                log.warning("journal %s: could not remove unfinished %s", self.dir, name)
            raise self._write_error(name, exc) from exc
        self._retire_current()
        parsed = parse_name(name)
        assert parsed is not None
        seg = _Segment(name, parsed.sequence, parsed.epoch, parsed.writer)
        self._segments[name] = seg
        self._current, self._fd = seg, fd
        return seg

    def _retire_current(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._current, self._fd = None, None

    def _write_error(self, name: str, exc: OSError) -> JournalError:
        if exc.errno in _DISK_FULL:
            return DiskFull(str(self.dir), self.pending.bytes, self.max_bytes)
        return JournalError(f"journal {self.dir}: cannot write {name}: {exc.strerror}")

    def _next_sequence(self) -> int:
        highest = 0
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
            segments = self._refresh(opening=False)
        new = tuple.__new__
        for seg in segments:
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
                reader = RecordReader(fd, begin, limit)
                for end, data in reader:
                    # tuple.__new__ skips the NamedTuple constructors: a third of the read time.
                    yield new(Entry, (new(Position, (name, end)), data))
                    budget -= 1
                    if budget == 0:
                        return
                if reader.stop is not Stop.END:
                    self._damaged_on_read(seg, fd, begin, reader.end)
            finally:
                os.close(fd)

    def _damaged_on_read(self, seg: _Segment, fd: int, begin: int, bad: int) -> None:
        # This part was checked when it was first seen, so either the caller's position is not
        # the end of a record, or the file changed under us since.
        reader = RecordReader(fd, HEADER_SIZE, seg.end)
        for _ in reader:
            pass
        if reader.stop is Stop.END:
            raise BadPosition(seg.name, begin)
        with self._lock:
            self._damaged(seg, f"checksum failure at byte {bad} found while reading", None)

    # -- releasing ---------------------------------------------------------------------------

    def release(self, drained: Mapping[str, int]) -> list[str]:
        """Delete the segments whose records are all in the database; `drained` maps a segment
        to the position stored there. Returns the names deleted."""
        with self._lock:
            self._check_writable()
            self._drained.update(drained)
            segments = self._refresh(opening=False)
            newest = max((seg.sequence, seg.name) for seg in segments)[1] if segments else None
            deleted: list[str] = []
            now = time.time()
            for seg in segments:
                if seg.name in drained:
                    self._set_drained(seg, drained[seg.name])
                if (
                    seg.drained_byte != seg.end
                    or seg.damaged
                    or seg is self._current
                    or seg.name == newest
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
                    os.unlink(path)
                except FileNotFoundError:
                    pass  # the other writer released it first
                del self._segments[seg.name]
                self._drained.pop(seg.name, None)
                deleted.append(seg.name)
            if deleted:
                fsync_dir(self.dir)
                log.info("journal %s: released %d segment(s)", self.dir, len(deleted))
            return deleted

    def _set_drained(self, seg: _Segment, byte: int) -> None:
        byte = max(byte, HEADER_SIZE)
        if byte == seg.drained_byte:
            return
        if byte >= seg.end:
            # Beyond what we have checked only while another writer's tail is still torn.
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
            more = count_records(fd, base, byte)
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
                        seg.damaged,
                    )
                )
            return out

    @property
    def quarantined(self) -> list[Path]:
        quarantine = self.dir / QUARANTINE
        if not quarantine.is_dir():
            return []
        return sorted(quarantine.iterdir())

    def close(self) -> None:
        with self._lock:
            self._retire_current()
            self._closed = True

    def _stale(self, mtime: float, now: float) -> bool:
        return now - mtime > self.foreign_grace_s

    def _refresh(self, *, opening: bool) -> list[_Segment]:
        """Bring what we know in line with the directory: forget segments that are gone, check
        new ones, and scan what other writers appended since. Returns segments in log order."""
        seen: set[str] = set()
        now = time.time()
        with os.scandir(self.dir) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                name = entry.name
                if name == QUARANTINE and entry.is_dir() or _ignored(name):
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
                elif seg is not self._current and st.st_size > seg.end and not seg.damaged:
                    self._scan(seg, st.st_mtime, now, truncate=False)
                    if seg.quarantined:
                        seen.discard(name)
                elif seg.damaged and self._may_repair(seg, st.st_mtime, now):
                    self._damaged(seg, "checksum failure before the tail", st.st_mtime)
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
        finally:
            os.close(fd)
        if head != HEADER:
            if not is_partial_header(head):
                self._foreign(path, "bad header", opening)
                return False
            # Created by a writer that died before the header was on disk, or is writing it now.
            if self._may_repair(seg, mtime, now):
                self._remove(path, "unfinished segment left by a crash")
            return False
        if size > HEADER_SIZE:
            self._scan(seg, mtime, now, truncate=opening)
        if seg.quarantined:
            return False
        if seg.name in self._drained:
            self._set_drained(seg, self._drained[seg.name])
        return True

    def _scan(self, seg: _Segment, mtime: float, now: float, *, truncate: bool) -> None:
        path = self.dir / seg.name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            size = os.fstat(fd).st_size
            reader = RecordReader(fd, seg.end, size)
            for _ in reader:
                seg.records += 1
            seg.end = reader.end
        finally:
            os.close(fd)
        if reader.stop is Stop.TORN and truncate and self._may_repair(seg, mtime, now):
            self._truncate(path, seg.end, size)
        elif reader.stop is Stop.CORRUPT:
            self._damaged(seg, f"checksum failure at byte {seg.end}, valid records after", mtime)

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

    def _damaged(self, seg: _Segment, reason: str, mtime: float | None) -> None:
        if seg is self._current:
            self._retire_current()  # the next batch goes to a fresh segment
        if not self._may_repair(seg, mtime, time.time()):
            if not seg.damaged:
                log.warning(
                    "journal %s: %s in %s; reading stops there until it can be quarantined",
                    self.dir,
                    reason,
                    seg.name,
                )
            seg.damaged = True
            return
        self._quarantine(seg, reason)

    def _quarantine(self, seg: _Segment, reason: str) -> None:
        quarantine = self.dir / QUARANTINE
        target = quarantine / seg.name
        suffix = 1
        while target.exists():
            target = quarantine / f"{seg.name}.{suffix}"
            suffix += 1
        try:
            if not quarantine.is_dir():
                quarantine.mkdir(exist_ok=True)
                fsync_dir(self.dir)
            os.rename(self.dir / seg.name, target)
            fsync_dir(quarantine)
            fsync_dir(self.dir)
        except FileNotFoundError:
            return  # another writer moved or released it first
        except OSError as exc:
            # A full or read-only disk must not stop the other segments from being drained.
            log.error("journal %s: cannot quarantine %s: %s", self.dir, seg.name, exc)
            seg.damaged = True
            return
        self._segments.pop(seg.name, None)
        self._drained.pop(seg.name, None)
        seg.damaged = seg.quarantined = True
        log.warning("journal %s: quarantined %s: %s", self.dir, seg.name, reason)
        if self.on_quarantine is not None:
            try:
                self.on_quarantine(target, reason)
            except Exception:
                log.exception("journal %s: on_quarantine failed", self.dir)

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
        )

    def _remove(self, path: Path, reason: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        fsync_dir(self.dir)
        log.warning("journal %s: removed %s: %s", self.dir, path.name, reason)

    def _foreign(self, path: Path, reason: str, opening: bool) -> None:
        if opening:
            raise ForeignFile(str(path))
        # Found while running: draining the segments must go on; say so once.
        if str(path) not in self._warned:
            self._warned.add(str(path))
            log.warning("journal %s: ignoring %s: %s", self.dir, path, reason)
