"""Segment files: their names, their header, and the few file operations the journal needs.

A segment is named `<sequence>-e<epoch>-<writer>.seg`, e.g. `00000042-e0000007-rs-a.seg`. The
sequence number is zero-padded so that `ls` order is log order; the epoch and the writer say
which instance wrote it, and only that instance ever appends to it.
"""

import os
import re
from pathlib import Path
from typing import NamedTuple

from storage.journal.record import HEADER

WRITER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_PATTERN = re.compile(r"(\d{8,})-e(\d{7,})-([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\.seg")


class SegmentName(NamedTuple):
    sequence: int
    epoch: int
    writer: str


class SegmentInfo(NamedTuple):
    """What `journal inspect` shows of one segment.

    `end` is the byte just after the last valid record; a segment whose `size` is larger has a
    torn tail (or is being written by another instance). `holes` are the damaged byte ranges
    that reading jumps over; `damaged` marks damage whose bytes are not in quarantine yet (in a
    live writer's segment reading stops there).
    """

    name: str
    writer: str
    epoch: int
    size: int
    records: int
    sequence: int
    end: int
    damaged: bool
    holes: tuple[tuple[int, int], ...] = ()


def segment_name(sequence: int, epoch: int, writer: str) -> str:
    return f"{sequence:08d}-e{epoch:07d}-{writer}.seg"


def parse_name(name: str) -> SegmentName | None:
    m = NAME_PATTERN.fullmatch(name)
    if m is None:
        return None
    return SegmentName(int(m[1]), int(m[2]), m[3])


def quarantined_sequence(name: str) -> int | None:
    """The sequence number of a quarantined file (which may carry a suffix after `.seg`)."""
    m = NAME_PATTERN.match(name)
    return int(m[1]) if m else None


def validate_writer(writer: str) -> str:
    if not isinstance(writer, str) or WRITER_PATTERN.fullmatch(writer) is None:
        raise ValueError(
            f"writer name {writer!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return writer


def is_partial_header(head: bytes) -> bool:
    """A file that holds less than a header, all of it correct: a crash right after creation."""
    return len(head) < len(HEADER) and HEADER.startswith(head)


def create_private(path: Path, flags: int) -> int:
    """Opens a new file readable by the owner only, whatever the umask."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return fd


def make_private_dir(path: Path) -> None:
    """Creates `path` if missing, and the folders above it that are missing too (a group's
    journal folder above its queues'), each 0700 whatever the umask, and makes their names
    durable."""
    if path.is_dir():
        return
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if not folder.is_dir():
                raise
        os.chmod(folder, 0o700)
        fsync_dir(folder.parent)


def write_all(fd: int, data: bytes | memoryview, pos: int) -> None:
    # A regular file takes a short write only when the disk fills or a signal arrives.
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
