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


class RecordReader:
    """Yields `(end_byte, payload)` for the records of a segment file between two bytes.

    After iteration, `end` is the byte just after the last valid record and `stop` says why the
    scan ended. Reads are large and buffered: one pread per READ_CHUNK_BYTES, not per record.
    """

    def __init__(self, fd: int, start: int, limit: int) -> None:
        self.fd = fd
        self.start = start
        self.limit = limit
        self.end = start
        self.stop: Stop | None = None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        fd, limit = self.fd, self.limit
        unpack = FRAME.unpack_from
        crc32 = zlib.crc32
        pos = self.start
        buf = b""
        base = pos  # file byte of buf[0]
        size = 0  # len(buf)
        try:
            while pos < limit:
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
        elif has_valid_record(fd, pos + 1, limit):
            self.stop = Stop.CORRUPT
        else:
            self.stop = Stop.TORN

    def _fill(self, pos: int, need: int) -> bytes:
        return pread_full(self.fd, min(max(READ_CHUNK_BYTES, need), self.limit - pos), pos)


def pread_full(fd: int, size: int, pos: int) -> bytes:
    # pread may return less than asked near the end of a file that is being written.
    out = os.pread(fd, size, pos)
    while 0 < len(out) < size:
        more = os.pread(fd, size - len(out), pos + len(out))
        if not more:
            break
        out += more
    return out


def has_valid_record(fd: int, start: int, limit: int) -> bool:
    """Whether any byte in [start, limit) begins a complete record whose CRC holds.

    This tells a torn tail (garbage to the end) from damage in the middle of a segment, which
    always has valid records after it. Runs of zero bytes are skipped in C: they cannot begin one.
    """
    if limit - start < FRAME_SIZE:
        return False
    buf = pread_full(fd, limit - start, start)
    unpack = FRAME.unpack_from
    size = len(buf)
    q = 0
    while q + FRAME_SIZE <= size:
        n, crc = unpack(buf, q)
        if n == 0 and crc == 0:
            m = _NONZERO.search(buf, q)
            if m is None:
                return False
            q = max(q + 1, m.start() - FRAME_SIZE + 1)
            continue
        if q + FRAME_SIZE + n <= size:
            if checksum(memoryview(buf)[q + FRAME_SIZE : q + FRAME_SIZE + n], n) == crc:
                return True
        q += 1
    return False


def count_records(fd: int, start: int, stop: int) -> int | None:
    """How many records lie in [start, stop) of a segment already checked; None when `stop` is
    not the end of a record. Follows lengths only: no checksums, one pread per chunk."""
    unpack = FRAME.unpack_from
    count = 0
    pos = start
    while pos < stop:
        buf = pread_full(fd, min(READ_CHUNK_BYTES, stop - pos), pos)
        if len(buf) < FRAME_SIZE:
            return None
        i = 0
        while i + FRAME_SIZE <= len(buf):
            n = unpack(buf, i)[0]
            i += FRAME_SIZE + n
            count += 1
            if pos + i >= stop:
                break
        pos += i
    return count if pos == stop else None
