"""The drainer: journal -> database.

`Drainer` moves journal records into the database, one transaction per batch holding the rows,
the journal positions reached and the fence check. The same loop serves normal operation, a
database outage (it retries, the journal grows) and the replay after it. A batch is bounded by
records and by bytes; one that meets the database's statement timeout is split, not retried as
it is (a report the database refuses is the sink's to isolate).
"""

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

from reporting.logs import About
from reporting.status.metrics import Metrics
from reporting.wire.decode import reason_label
from storage.database import Batch, Sink
from storage.errors import (
    DatabaseUnavailable,
    PositionsLost,
    StaleEpoch,
    StatementTimeout,
)
from storage.journal import Entry, Journal
from storage.reports import Rejected, Report, from_record

log = logging.getLogger(__name__)
T = TypeVar("T")

# An idle drainer checks this often that the database still holds what it committed.
VERIFY_IDLE_S = 5.0
# The read-ahead reads and decodes this many records between chances for the drainer to take the
# interpreter lock back (a thread that holds it keeps it for up to 5 ms, and the drainer needs it
# after each of its round trips to the database).
_YIELD_RECORDS = 20
# A drain batch holds at most this many bytes of records (beside `batch_records`), so that large
# reports neither take memory by the batch-full nor make one transaction run long; a single
# record larger than this is a batch of its own.
BATCH_BYTES = 4 << 20
# After a batch met the statement timeout, this many batches are stored at the smaller size
# before it doubles again: growing at once would meet the timeout every other batch.
GROW_AFTER_BATCHES = 20


def _decode_record(data: bytes, payload: bool = True) -> Report | Rejected:
    try:
        item = from_record(data, payload=payload)
        # Field types too: the rows are built in the read-ahead, where a payload that is not an
        # object would fail every read of this batch, and so the drain, for ever.
        if isinstance(item, Report):
            parsed = isinstance(item.payload, dict) or (item.payload is None and not payload)
            fine = parsed and isinstance(item.kind, str) and isinstance(item.body, str | None)
        else:
            fine = isinstance(item.reason, str)
        if fine and isinstance(item.report_id, str) and isinstance(item.queue, str):
            return item
    except (ValueError, KeyError, TypeError):
        pass
    # A checksummed record that does not decode is a bug, not a reason to stop the drain. Its id
    # is a digest of its bytes, the same in every process, so that a record drained again (after
    # a crash or a rewind) is the same rejected row.
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    return Rejected(
        f"undecodable-{digest}", "", "undecodable journal record", data, datetime.now(UTC)
    )


def _paced(items: Iterable[T], every: int) -> Iterator[T]:
    """`items`, letting another thread take the interpreter lock after every `every` of them."""
    for count, item in enumerate(items, 1):
        yield item
        if count % every == 0:
            time.sleep(0)


def _reached(entries: list[Entry]) -> dict[str, int]:
    """The position after the last of `entries` in each segment they come from."""
    reached: dict[str, int] = {}
    for entry in entries:
        reached[entry.position.segment] = entry.position.byte
    return reached


class Drainer:
    """Drains one journal into the database in a thread of its own."""

    def __init__(
        self,
        journal: Callable[[], Journal],
        sink: Sink,
        *,
        batch_records: int,
        metrics: Metrics,
        on_fenced: Callable[[StaleEpoch], None],
        on_room: Callable[[], None],
        name: str,
        queues: Sequence[str] = (),
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.journal = journal
        self.sink = sink
        self.batch_records = batch_records
        self.batch_bytes = batch_bytes
        # What a batch may hold now: less than the above after a batch met the statement
        # timeout; `_stored_since` counts the batches stored since it last changed.
        self._max_records = batch_records
        self._max_bytes = batch_bytes
        self._stored_since = 0
        # The epoch this drainer writes under: given by the role change that started it, never
        # read again from the election, so that a drainer never writes with an epoch its
        # instance took after it (nor one it has lost: the fence refuses that, and it stops).
        self.epoch: int | None = None
        # The epoch this drainer last claimed the fence for: claiming it again is no first claim.
        self._claimed: int | None = None
        # Why the drainer is not running, for /status; None while it runs.
        self.stopped_because: str | None = "not started"
        self.metrics = metrics
        self.on_fenced = on_fenced
        self.on_room = on_room
        self.name = name
        # Its lines carry the lane's queues and the epoch it writes under at the time.
        self.log = About(log, queue=queues, epoch=lambda: self.epoch)
        self.database_up: bool | None = None
        self._positions: dict[str, int] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._caught_up = threading.Event()
        self._catching_up = False
        # The read-ahead: the positions it reads from, and the batch it gives.
        self._ahead: tuple[dict[str, int], Future[tuple[list[Entry], Batch]]] | None = None
        self.stored = 0
        self.drained_records = 0

    def start(self, epoch: int, *, claimed: bool = False) -> None:
        """Drain under `epoch`, which the caller holds; the fence is raised to it first, a first
        claim unless `claimed` (the epoch is the fence's own already: replay's)."""
        old = self._thread
        if old is not None and old.is_alive():
            # Stuck in a database call that stop() could not interrupt: two drainers must
            # never run at once, so wait for it (PostgreSQL's statement timeout bounds this).
            self.log.warning("%s: waiting for the previous drainer to finish", self.name)
            old.join()
        self._stop.clear()
        self._caught_up.clear()
        self.epoch = epoch
        if claimed:
            self._claimed = epoch
        self.stopped_because = None
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-drainer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.running and self.stopped_because is None:
            self.stopped_because = "stopped"
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def wake(self) -> None:
        self._wake.set()

    def wait_caught_up(self, timeout_s: float) -> bool:
        """True once a pass found nothing left to drain; False on time-out, a database outage or
        the drainer's end (fenced, stopped), which ends the wait at once."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            if self._caught_up.wait(0.05):
                return True
            if self.database_up is False:
                return False
            if not self.running:
                self.log.warning(
                    "%s: drainer ended while waited for (%s)", self.name, self.stopped_because
                )
                return False
        return False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _mark(self, up: bool) -> None:
        if up != self.database_up:
            if up:
                self.log.info("%s: database is up", self.name)
            else:
                self.log.warning("%s: database is down; buffering in the journal", self.name)
                self._catching_up = True
        self.database_up = up

    def _load_positions(self) -> dict[str, int] | None:
        while not self._stop.is_set():
            try:
                # The schema may be missing when the server started while the database was down.
                self.sink.upgrade()
                # The fence moves when the role does: from here on, a stale holder's next
                # commit is refused, not only from this drainer's first write.
                # A first claim of an epoch must find the fence below it: one that holds it
                # already holds it for another writer (the epochs' counter was started again).
                # Standalone always writes under epoch 0, with nobody to share it.
                epoch = self._epoch()
                self.sink.claim_epoch(epoch, first=0 < epoch != self._claimed)
                self._claimed = epoch
                positions = self.sink.positions()
                # Positions are keyed by segment name: a journal folder made anew (wiped, moved,
                # a relative path read from elsewhere) must not name a new segment like one the
                # database has a position in, or its first records would count as drained.
                journal = self.journal()
                journal.note_used(positions)
                # The rows of released segments stay (the server's role may not delete them);
                # only the segments still on disk are read and checked.
                on_disk = {info.name for info in journal.segments()}
                self._mark(True)
                return {name: byte for name, byte in positions.items() if name in on_disk}
            except DatabaseUnavailable:
                self._mark(False)
                self._stop.wait(0.5)
        return None

    def _epoch(self) -> int:
        assert self.epoch is not None, "a drainer runs only under an epoch"
        return self.epoch

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._drain()
                return
            except StaleEpoch as exc:
                self._refused(exc)
                return
            except Exception:
                # Whatever went wrong, the journal still holds every record: start over from
                # the positions the database has, after a pause.
                self.log.exception("%s: drainer failed; starting over", self.name)
                self._stop.wait(1.0)

    def _drain(self) -> None:
        positions = self._load_positions()
        if positions is None:
            return
        verified = time.monotonic()
        self._ahead = None
        reader = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-reader")
        try:
            while not self._stop.is_set():
                entries, batch = self._next_batch(positions)
                if not entries:
                    self._release(positions)
                    self._catching_up = False
                    self._caught_up.set()
                    self._wake.wait(0.2)
                    self._wake.clear()
                    if time.monotonic() - verified > VERIFY_IDLE_S:
                        # Nothing to write would reveal a failed-over database that lost our
                        # last commits, so an idle drainer asks now and then.
                        verified = time.monotonic()
                        self._verify(positions)
                    continue
                # The next batch is read, decoded and made into rows while this one is in the
                # database, which is mostly waiting with the interpreter lock released.
                after = positions | _reached(entries)
                self._ahead = (
                    after,
                    reader.submit(
                        self._read, after, self._max_records, self._max_bytes, ahead=True
                    ),
                )
                if not self._write(entries, batch, positions):
                    return
                self._release(positions)
        finally:
            self._ahead = None
            reader.shutdown(cancel_futures=True)

    def _read(
        self,
        positions: dict[str, int],
        max_records: int,
        max_bytes: int,
        *,
        more: bool = False,
        ahead: bool = False,
    ) -> tuple[list[Entry], Batch]:
        """The records after `positions`, up to `max_records` and `max_bytes` of them; at least
        one however large, unless this reads `more` for a batch begun already. Read `ahead` (in
        the read-ahead's thread), it lets the drainer's thread run every few records; the
        drainer's own reads do not (a thread that lets go of the lock beside busy ones waits up
        to 5 ms for it each time, and a report's latency with it)."""
        entries: list[Entry] = []
        size = 0
        records = self.journal().read(positions, max_records=max_records)
        for entry in _paced(records, _YIELD_RECORDS) if ahead else records:
            size += len(entry.data)
            if size > max_bytes and (entries or more):
                break
            entries.append(entry)
        del records  # closes the segment it stopped in
        # COPY takes a report's text and typed columns; only the other ways parse its payload.
        payload = not self.sink.copies
        read = _paced(entries, _YIELD_RECORDS) if ahead else entries
        items = [_decode_record(entry.data, payload) for entry in read]
        return entries, self.sink.prepare(items)

    def _next_batch(self, positions: dict[str, int]) -> tuple[list[Entry], Batch]:
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return self._read(positions, self._max_records, self._max_bytes)
        start, future = ahead
        # A rewind or a split drops the read-ahead; otherwise the positions are where it read
        # from, less the segments released since (all their records drained).
        if any(start.get(segment) != byte for segment, byte in positions.items()):
            future.cancel()
            return self._read(positions, self._max_records, self._max_bytes)
        entries, batch = future.result()
        size = sum(len(entry.data) for entry in entries)
        if len(entries) < self._max_records and size < self._max_bytes:
            # It stopped at the journal's end (or at smaller limits): add what was appended
            # since, so that the batch is what a read now would give.
            more, more_batch = self._read(
                start | _reached(entries),
                self._max_records - len(entries),
                self._max_bytes - size,
                more=True,
            )
            entries += more
            batch = self.sink.join([batch, more_batch])
        return entries, batch

    def _write(self, entries: list[Entry], batch: Batch, positions: dict[str, int]) -> bool:
        reached = _reached(entries)
        started = time.monotonic()
        # Where our own earlier commits left the journal: a database that answers with less has
        # lost them (an asynchronous standby promoted), and we replay from there.
        committed = dict(positions)
        try:
            result = self.sink.write_batch_retrying(
                batch,
                positions=reached,
                epoch=self._epoch(),
                stop=self._stop,
                on_retry=lambda attempt, exc: self._mark(False),
                committed=committed,
            )
        except PositionsLost as exc:
            return self._rewind(positions, str(exc))
        except StaleEpoch as exc:
            self._refused(exc)
            return False
        except StatementTimeout as exc:
            # Raised at once for a batch of more than one record: the same batch would meet the
            # timeout again, so the next ones are half its size (GROW_AFTER_BATCHES above).
            size = sum(len(entry.data) for entry in entries)
            self._max_records = max(1, len(entries) // 2)
            self._max_bytes = max(1, size // 2)
            self._stored_since = 0
            self._ahead = None  # read from after this batch, which is not stored
            self.log.warning(
                "%s: a batch of %d records (%d bytes) met the statement timeout, splitting it: %s",
                self.name,
                len(entries),
                size,
                exc,
            )
            return True
        except DatabaseUnavailable:
            return False  # only raised once stop is set
        self._grow()
        self._mark(True)
        self.metrics.drain_seconds.observe(time.monotonic() - started)
        positions.update(reached)
        self.stored += result.stored
        self.drained_records += len(entries)
        self.metrics.stored.inc(result.stored)
        self.metrics.duplicates.inc(result.duplicates)
        for item in batch.items:
            if isinstance(item, Rejected):
                self.metrics.rejected.labels(reason_label(item.reason)).inc()
        if result.refused:
            self.metrics.rejected.labels("database refused").inc(result.refused)
        if self._catching_up:
            self.metrics.replayed.inc(len(entries))
        return True

    def _grow(self) -> None:
        self._stored_since += 1
        if self._stored_since >= GROW_AFTER_BATCHES:
            self._stored_since = 0
            self._max_records = min(self.batch_records, self._max_records * 2)
            self._max_bytes = min(self.batch_bytes, self._max_bytes * 2)

    def _refused(self, exc: StaleEpoch) -> None:
        # The drainer ends here; the instance goes back to its election, and a drainer runs
        # again once a role change gives it an epoch it holds.
        self.stopped_because = f"fenced: {exc}"
        self.metrics.fenced.inc()
        self.log.warning("%s: write refused by the fence: %s", self.name, exc)
        self.on_fenced(exc)

    def _verify(self, positions: dict[str, int]) -> None:
        try:
            stored = self.sink.positions()
        except DatabaseUnavailable:
            self._mark(False)
            return
        behind = sorted(s for s, byte in positions.items() if stored.get(s, 0) < byte)
        if behind:
            self._rewind(positions, f"database holds older positions of {', '.join(behind)}")

    def _rewind(self, positions: dict[str, int], why: str) -> bool:
        """Goes back to the database's positions: the records after them are drained again."""
        self.metrics.rewound.inc()
        self._ahead = None  # read from positions that are no longer ours
        self.log.warning("%s: %s; replaying from the journal's retained segments", self.name, why)
        stored = self._load_positions()
        if stored is None:
            return False
        positions.clear()
        positions.update(stored)
        return True

    def _release(self, positions: dict[str, int]) -> None:
        released = self.journal().release(positions)
        if released:
            # Their rows stay in the database (one per segment, never deleted at run time): they
            # also keep a journal folder made anew from naming a segment like a released one.
            for name in released:
                positions.pop(name, None)
            self.on_room()
