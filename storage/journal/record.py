"""The bytes on disk: a segment header, then records framed as length, CRC, payload.

    segment = HEADER record*
    record  = length:u32le crc:u32le payload[length]
    crc     = zlib.crc32(payload, length ^ CRC_SEED)

Seeding the CRC with the length makes a record's length part of what the CRC checks, and makes a
run of zero bytes (what a file system may leave after a power loss) never parse as a valid record.
"""

import os
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from enum import Enum
from typing import NamedTuple

# Magic, then a format version byte; a newline keeps `head -c 8` readable.
HEADER = b"RSJRNL\x01\n"
HEADER_SIZE = len(HEADER)
FRAME = struct.Struct("<II")
FRAME_SIZE = FRAME.size
CRC_SEED = 0x5EEDC0DE
MAX_RECORD_BYTES = (1 << 32) - 1
READ_CHUNK_BYTES = 1 << 20

_NONZERO = re.compile(rb"[^\x00]")


def checksum(payload: bytes | memoryview, length: int) -> int:
    return zlib.crc32(payload, length ^ CRC_SEED)


def encode_batch(records: Sequence[bytes]) -> bytes:
    """Frame `records` into one buffer, so a batch costs one write."""
    pack = FRAME.pack
    crc32 = zlib.crc32
    parts: list[bytes] = []
    append = parts.append
    for data in records:
        n = len(data)
        if n > MAX_RECORD_BYTES:
            raise ValueError(f"record of {n} bytes is larger than {MAX_RECORD_BYTES}")
        append(pack(n, crc32(data, n ^ CRC_SEED)))
        append(data)
    return b"".join(parts)


class Stop(Enum):
    """Why a scan of a segment stopped."""

    END = "end"  # every byte up to the limit is a valid record
    TORN = "torn"  # a partial or invalid tail with no valid record after it
    CORRUPT = "corrupt"  # an invalid record with a valid record somewhere after it


class Hole(NamedTuple):
    """Damaged bytes between two valid records (or a header and a record): read past, never
    parsed. `end` is where the next valid record begins."""

    start: int
    end: int


_NO_HOLE = Hole(1 << 62, 1 << 62)


class RecordReader:
    """Yields `(end_byte, payload)` for the records of a segment file between two bytes, jumping
    over `holes` (sorted, not overlapping).

    After iteration, `end` is the byte just after the last valid record and `stop` says why the
    scan ended; with CORRUPT, `resume` is where the next valid record begins. Reads are large and
    buffered: one pread per READ_CHUNK_BYTES, not per record.
    """

    def __init__(self, fd: int, start: int, limit: int, *, holes: Sequence[Hole] = ()) -> None:
        self.fd = fd
        self.start = start
        self.limit = limit
        self.holes = [h for h in holes if h.end > start and h.start < limit]
        self.end = start
        self.stop: Stop | None = None
        self.resume: int | None = None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        fd, limit = self.fd, self.limit
        unpack = FRAME.unpack_from
        crc32 = zlib.crc32
        holes = iter(self.holes)
        hole = next(holes, _NO_HOLE)
        pos = self.start
        buf = b""
        base = pos  # file byte of buf[0]
        size = 0  # len(buf)
        try:
            while pos < limit:
                if pos >= hole.start:
                    # Damage already found and set aside: the next record begins at its end.
                    pos = max(pos, hole.end)
                    hole = next(holes, _NO_HOLE)
                    continue
                i = pos - base
                if i + FRAME_SIZE > size:
                    buf, base, i = self._fill(pos, FRAME_SIZE), pos, 0
                    size = len(buf)
                    if size < FRAME_SIZE:
                        break
                n, crc = unpack(buf, i)
                end = pos + FRAME_SIZE + n
                if end > limit:
                    break
                if i + FRAME_SIZE + n > size:
                    buf, base, i = self._fill(pos, FRAME_SIZE + n), pos, 0
                    size = len(buf)
                    if size < FRAME_SIZE + n:
                        break
                data = buf[i + FRAME_SIZE : i + FRAME_SIZE + n]
                if crc32(data, n ^ CRC_SEED) != crc:
                    break
                pos = end
                yield end, data
        finally:
            self.end = pos
        if pos >= limit:
            self.stop = Stop.END
            return
        self.resume = find_record(fd, pos + 1, limit)
        self.stop = Stop.TORN if self.resume is None else Stop.CORRUPT

    def _fill(self, pos: int, need: int) -> bytes:
        return pread_full(self.fd, min(max(READ_CHUNK_BYTES, need), self.limit - pos), pos)


class Scan(NamedTuple):
    """What a recovery scan of a segment found from one byte to its size."""

    records: int
    end: int  # byte after the last valid record
    holes: list[Hole]  # damage with valid records after it, in order
    stop: Stop  # END or TORN after a full scan; CORRUPT when told not to read past damage


def scan(fd: int, start: int, limit: int, *, past_damage: bool) -> Scan:
    """Checks the records in [start, limit). With `past_damage`, an invalid record with valid
    ones after it becomes a hole and the scan goes on at the next record whose length and CRC
    hold; without, the scan stops there (CORRUPT)."""
    records = 0
    holes: list[Hole] = []
    pos = start
    while True:
        reader = RecordReader(fd, pos, limit)
        for _ in reader:
            records += 1
        if reader.stop is not Stop.CORRUPT or not past_damage:
            assert reader.stop is not None
            return Scan(records, reader.end, holes, reader.stop)
        assert reader.resume is not None
        holes.append(Hole(reader.end, reader.resume))
        pos = reader.resume


def damaged_tail(fd: int, end: int, size: int) -> bool:
    """Whether the bytes after the last valid record are damage rather than a torn write.

    A write cut short by a crash leaves a prefix of its records (a last frame that runs past the
    end of the file) or, after a power loss, zeros. A complete frame whose CRC fails, in bytes
    that are not all zeros, was written whole and changed since: an acknowledged record.
    """
    if size - end < FRAME_SIZE:
        return False
    tail = pread_full(fd, size - end, end)
    if _NONZERO.search(tail) is None:
        return False
    n = FRAME.unpack_from(tail, 0)[0]
    return FRAME_SIZE + n <= len(tail)


def unwritten(fd: int, size: int) -> bool:
    """Whether a file is what a crash right after creating a segment leaves: part of the header
    (possibly none), then nothing or zeros (blocks allocated but never written)."""
    head = pread_full(fd, min(size, HEADER_SIZE), 0)
    n = 0
    while n < len(head) and head[n] == HEADER[n]:
        n += 1
    pos = n
    while pos < size:
        chunk = pread_full(fd, min(READ_CHUNK_BYTES, size - pos), pos)
        if not chunk or _NONZERO.search(chunk) is not None:
            return False
        pos += len(chunk)
    return True


def pread_full(fd: int, size: int, pos: int) -> bytes:
    # pread may return less than asked near the end of a file that is being written.
    out = os.pread(fd, size, pos)
    while 0 < len(out) < size:
        more = os.pread(fd, size - len(out), pos + len(out))
        if not more:
            break
        out += more
    return out


def find_record(fd: int, start: int, limit: int) -> int | None:
    """The first byte in [start, limit) that begins a complete record whose CRC holds, if any.

    This tells a torn tail (garbage to the end) from damage in the middle of a segment, which
    always has valid records after it, and finds where reading resumes after the damage. Runs of
    zero bytes are skipped in C: they cannot begin one.
    """
    if limit - start < FRAME_SIZE:
        return None
    buf = pread_full(fd, limit - start, start)
    unpack = FRAME.unpack_from
    size = len(buf)
    q = 0
    while q + FRAME_SIZE <= size:
        n, crc = unpack(buf, q)
        if n == 0 and crc == 0:
            m = _NONZERO.search(buf, q)
            if m is None:
                return None
            q = max(q + 1, m.start() - FRAME_SIZE + 1)
            continue
        if q + FRAME_SIZE + n <= size:
            if checksum(memoryview(buf)[q + FRAME_SIZE : q + FRAME_SIZE + n], n) == crc:
                return start + q
        q += 1
    return None


def count_records(fd: int, start: int, stop: int, holes: Sequence[Hole] = ()) -> int | None:
    """How many records lie in [start, stop) of a segment already checked, jumping over its
    `holes`; None when `stop` is neither the end of a record nor inside a hole. Follows lengths
    only: no checksums, one pread per chunk."""
    unpack = FRAME.unpack_from
    count = 0
    pos = start
    for hole in [*holes, _NO_HOLE]:
        if hole.end <= pos:
            continue
        part_stop = min(stop, hole.start)
        while pos < part_stop:
            buf = pread_full(fd, min(READ_CHUNK_BYTES, part_stop - pos), pos)
            if len(buf) < FRAME_SIZE:
                return None
            i = 0
            while i + FRAME_SIZE <= len(buf):
                n = unpack(buf, i)[0]
                i += FRAME_SIZE + n
                count += 1
                if pos + i >= part_stop:
                    break
            pos += i
        if pos >= stop:
            break
        if pos != hole.start:
            return None
        if stop <= hole.end:
            # A position inside damage found after it was stored: the records around it were
            # read, those in the hole are lost either way.
            return count
        pos = hole.end
    return count if pos == stop else None
