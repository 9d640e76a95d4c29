class StorageError(Exception):
    """Base class for storage errors."""

    def __init__(self, *args: object, **facts: object) -> None:
        super().__init__(*args)
        # The facts a handler may act on (segment, epoch, ...), given as keywords: attributes.
        vars(self).update(facts)


class JournalError(StorageError):
    """Base class for journal errors."""


class JournalFull(JournalError):
    """Raised when an append would take the journal past max_bytes, or the disk is full."""

    def __init__(self, pending_bytes: int, max_bytes: int) -> None:
        message = f"journal full: {pending_bytes} of {max_bytes} bytes"
        super().__init__(message, pending_bytes=pending_bytes, max_bytes=max_bytes)


class ForeignFile(JournalError):
    """Raised when the journal directory holds a file that is not a segment."""

    def __init__(self, path: str) -> None:
        super().__init__(f"not a journal segment: {path}", path=path)


class DatabaseError(StorageError):
    """Base class for database errors; `sqlstate` is the database's code, where it gave one."""

    def __init__(self, message: str, *, sqlstate: str | None = None, **facts: object) -> None:
        super().__init__(message, sqlstate=sqlstate, **facts)


class DatabaseUnavailable(DatabaseError):
    """Raised when the database cannot be reached; the write may be retried."""


class StatementTimeout(DatabaseUnavailable):
    """Raised when a statement ran past the statement timeout; a smaller batch may pass."""


class StaleEpoch(DatabaseError):
    """Raised when a drain transaction's epoch is older than the fence."""

    def __init__(self, cluster: str, epoch: int, fence: int | None = None) -> None:
        message = f"epoch {epoch} of {cluster} is fenced off by a newer writer"
        if fence is not None:
            message += f" (the fence is at {fence})"
        # `fence`: the epoch the fence held when it refused, where the sink read it.
        super().__init__(message, cluster=cluster, epoch=epoch, fence=fence)


class PositionsLost(DatabaseError):
    """Raised when the database holds older journal positions than this drainer committed.

    It lost commits, e.g. an asynchronously replicated standby was promoted: the drainer goes
    back to the stored positions and replays from its retained segments.
    """

    def __init__(self, journal: str, segment: str, stored: int, committed: int) -> None:
        message = (
            f"journal {journal}: segment {segment} stored up to byte {stored}, "
            f"but byte {committed} was committed"
        )
        super().__init__(
            message, journal=journal, segment=segment, stored=stored, committed=committed
        )


class DiskFull(JournalFull):
    """Raised when the disk has no room for an append; the journal is left as it was."""

    def __init__(self, dir: str, pending_bytes: int, max_bytes: int) -> None:
        super().__init__(pending_bytes, max_bytes)
        self.args = (f"journal {dir}: disk full with {pending_bytes} bytes pending",)
        self.dir = dir


class BadPosition(JournalError):
    """Raised when a position does not fall just after a record of its segment."""

    def __init__(self, segment: str, byte: int) -> None:
        message = f"byte {byte} of segment {segment} is not the end of a record"
        super().__init__(message, segment=segment, byte=byte)


class JournalLocked(JournalError):
    """Raised when another process already writes the journal under the same writer name."""

    def __init__(self, dir: str, writer: str, pid: int | None) -> None:
        holder = f"pid {pid}" if pid else "another process"
        message = f"journal {dir}: writer {writer!r} is already running as {holder}"
        super().__init__(message, dir=dir, writer=writer, pid=pid)


class SegmentLost(JournalError):
    """Raised when the segment being written was removed or replaced: the batch is not durable."""

    def __init__(self, dir: str, segment: str) -> None:
        message = (
            f"journal {dir}: segment {segment} was removed while being written; "
            "batch not acknowledged"
        )
        super().__init__(message, dir=dir, segment=segment)


class JournalExposed(JournalError):
    """Raised when the journal directory is open to group or others."""

    def __init__(self, dir: str, mode: int) -> None:
        message = (
            f"journal {dir}: mode {mode:04o} lets other users read the reports; "
            f"run: chmod 700 {dir}"
        )
        super().__init__(message, dir=dir, mode=mode)
