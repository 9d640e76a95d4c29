"""The sink: where drained reports are stored, exactly once, by the writer that holds the fence.

A batch is one transaction: fence check, report rows (a report_id stored already is skipped),
rejected rows, journal positions. A crash anywhere leaves all of it or none of it, and replaying
a batch whose commit was lost stores nothing twice.

A report the database refuses (an error about its data, which a retry cannot fix: a value too
large for an index, out of range, invalid in the encoding; `engine.classify`) is found by
bisection inside savepoints and kept in rejected_reports with the database's reason, and the rest
of its batch is stored. A batch goes in whole first, without savepoints; only when the database
refuses a row of it is the transaction rolled back and the batch written again, isolating it.
Only an error about the database itself (connection lost, failover, serialization failure,
deadlock, resources) fails the batch, to be retried whole.
"""

import copy
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tenacity
from sqlalchemy import Connection, bindparam, func, select, text

from storage.database import dialects, migrate
from storage.database.engine import (
    Failure,
    classify,
    make_engine,
    reason,
    redacted,
    sqlstate_of,
    translated,
    watch_availability,
)
from storage.database.rows import refused_row, rejected_row
from storage.database.schema import fence, journal_positions, rejected_reports, reports
from storage.errors import DatabaseUnavailable, PositionsLost, StaleEpoch, StatementTimeout
from storage.reports import Rejected, Report

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2
RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 5.0
RETRY_JITTER_S = 0.25  # spreads the retries of two instances apart
_ID_CHUNK = 500


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a batch did; every item of the batch is counted in exactly one field.

    stored: new rows in `reports`; rejected: new rows in `rejected_reports` (rejected messages
    and reports the database refused); duplicates: items that were already stored. refused: of
    `rejected`, the reports the database refused.
    """

    stored: int
    duplicates: int
    rejected: int
    refused: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch's items with their rows built, ready for `write_batch` (see `Sink.prepare`)."""

    items: Sequence[Report | Rejected]
    reports: list[Report]
    # The reports as the dialect's bulk path takes them (COPY's rows on PostgreSQL), else None.
    copy_rows: Any | None
    rejected_rows: list[dict[str, Any]]


class _RowRefused(Exception):
    """The database refused a row of a batch written whole: written again, isolating it."""


class Sink:
    """The database of one drainer: `journal` keys its positions, `cluster` is its fence."""

    def __init__(
        self,
        url: str,
        *,
        cluster: str,
        journal: str,
        warn_unreachable: bool = True,
        password: Callable[[], str] | None = None,
    ) -> None:
        """`warn_unreachable`: log why the database cannot be reached (off for one-shot commands,
        whose error line says it). `password`: asked for each new connection (see make_engine)."""
        self.url = url
        self.cluster = cluster
        self.journal = journal
        with translated(url):
            self._engine = make_engine(url, password=password)
            self._probe_engine = make_engine(url, timeout_s=PROBE_TIMEOUT_S, password=password)
        self._dialect = dialects.for_name(self._engine.dialect.name)
        # Why the database could not be reached, as last seen by any caller; None once it was.
        # A list of one, so that views (copies) share it with this sink.
        self._last_error: list[str | None] = [None]
        self._warn_unreachable = warn_unreachable
        self._error_lock = threading.Lock()
        for engine in (self._engine, self._probe_engine):
            watch_availability(engine, self._note)

    @property
    def copies(self) -> bool:
        """True where reports go in by COPY (PostgreSQL), which needs their text and typed
        columns but not their parsed payloads."""
        return self._dialect.copies

    def view(self, *, cluster: str, journal: str) -> "Sink":
        """The same database under another fence and positions key, sharing this sink's engines
        (which only this sink closes)."""
        other = copy.copy(self)
        other.cluster = cluster
        other.journal = journal
        other._dialect = copy.copy(self._dialect)  # its own run of duplicates (PostgreSQL)
        return other

    def prepare(self, items: Sequence[Report | Rejected]) -> Batch:
        """Builds the rows of `items`: pure work, which a caller may do outside the transaction
        (the drainer does it while the previous batch is in the database)."""
        report_items = [item for item in items if isinstance(item, Report)]
        copy_rows = self._dialect.bulk_rows(report_items)
        return Batch(
            items,
            report_items,
            copy_rows,
            [rejected_row(item) for item in items if isinstance(item, Rejected)],
        )

    def join(self, parts: Sequence[Batch]) -> Batch:
        """One batch of `parts` (each from `prepare`), in their order (the drainer joins a batch
        and the records appended after it was read)."""
        bulks = [part.copy_rows for part in parts]
        return Batch(
            [item for part in parts for item in part.items],
            [report for part in parts for report in part.reports],
            None if any(bulk is None for bulk in bulks) else self._dialect.join_bulk(bulks),
            [row for part in parts for row in part.rejected_rows],
        )

    def __repr__(self) -> str:
        return f"Sink({redacted(self.url)!r}, cluster={self.cluster!r}, journal={self.journal!r})"

    # -- schema and health --------------------------------------------------------------------

    def upgrade(self) -> None:
        with translated(self.url):
            migrate.upgrade(self._engine)

    def probe(self) -> bool:
        """True if a new connection answers `SELECT 1` within a couple of seconds; otherwise
        `last_error` says why."""
        try:
            with self._probe_engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            self._note(None)
            return True
        except Exception as error:  # a probe reports, it never raises
            self._note(reason(error))
            return False
        finally:
            # A fresh connection each time: a pooled one would answer for a database that no
            # longer accepts new ones.
            self._probe_engine.dispose()

    @property
    def last_error(self) -> str | None:
        """Why the database could not be reached when last tried; None if it could."""
        return self._last_error[0]

    def _note(self, error: str | None) -> None:
        # Logged once per change: an outage of hours is one line, a new reason another.
        with self._error_lock:
            if error == self._last_error[0]:
                return
            self._last_error[0] = error
        if not self._warn_unreachable:
            return
        if error is not None:
            log.warning("database %s: cannot reach it: %s", redacted(self.url), error)
        else:
            log.info("database %s: reachable", redacted(self.url))

    # -- the fence ----------------------------------------------------------------------------

    def claim_epoch(self, epoch: int, *, first: bool = False) -> None:
        """Raise the fence to `epoch`; raises StaleEpoch if a newer epoch has claimed it, or if
        `first` (the writer has not claimed this epoch before) the same epoch: two writers
        never hold one epoch, even when the epochs' counter was started again."""
        with translated(self.url), self._engine.begin() as conn:
            self._check_fence(conn, epoch, strict=first)

    def fence_epoch(self) -> int | None:
        with translated(self.url), self._engine.connect() as conn:
            return conn.scalar(select(fence.c.epoch).where(fence.c.cluster == self.cluster))

    def _check_fence(self, conn: Connection, epoch: int, *, strict: bool = False) -> None:
        if not self._dialect.claim_fence(conn, self.cluster, epoch, strict=strict):
            raise self._stale(conn, epoch)

    def _stale(self, conn: Connection, epoch: int) -> StaleEpoch:
        """The refusal of `epoch`, with the fence's epoch read in the refused transaction (the
        election takes its next epoch above it)."""
        fence_now = conn.scalar(select(fence.c.epoch).where(fence.c.cluster == self.cluster))
        return StaleEpoch(self.cluster, epoch, fence_now)

    # -- writing ------------------------------------------------------------------------------

    def write_batch(
        self,
        items: Sequence[Report | Rejected] | Batch,
        *,
        positions: Mapping[str, int],
        epoch: int,
        committed: Mapping[str, int] | None = None,
    ) -> WriteResult:
        """Store `items` and the journal `positions` reached (segment -> byte) in one transaction.

        `committed` is where the caller knows earlier transactions left those segments; a stored
        position behind it means the database lost commits, and PositionsLost is raised with
        nothing stored. Raises StaleEpoch (nothing stored) if a newer epoch holds the fence,
        DatabaseUnavailable if the database cannot be reached (retry the same batch),
        DatabaseError otherwise.
        """
        batch = items if isinstance(items, Batch) else self.prepare(items)
        try:
            return self._write_batch(batch, positions, epoch, committed, isolating=False)
        except _RowRefused:
            # The whole transaction is rolled back; written again, each insert in a savepoint.
            return self._write_batch(batch, positions, epoch, committed, isolating=True)

    def _write_batch(
        self,
        batch: Batch,
        positions: Mapping[str, int],
        epoch: int,
        committed: Mapping[str, int] | None,
        *,
        isolating: bool,
    ) -> WriteResult:
        with translated(self.url), self._engine.begin() as conn:
            self._open_batch(conn, epoch, positions, committed or {})
            if isolating:
                stored, refused = self._insert_isolating(conn, batch.reports, batch.copy_rows)
            else:
                # Most batches hold no row the database refuses: they go in without the
                # savepoints that isolating one takes (two round trips each).
                stored, refused = self._insert_whole(conn, batch.reports, batch.copy_rows), []
            rejected = self._dialect.insert_many(
                conn, rejected_reports, batch.rejected_rows, "digest"
            )
            refused_rows = [refused_row(report, why) for report, why in refused]
            new_refused = self._dialect.insert_many(conn, rejected_reports, refused_rows, "digest")
        if refused:
            log.warning(
                "database %s: refused %d report(s), kept as rejected: %s",
                redacted(self.url),
                len(refused),
                ", ".join(report.report_id for report, _ in refused[:5]),
            )
        rejected += new_refused
        return WriteResult(stored, len(batch.items) - stored - rejected, rejected, new_refused)

    def write_batch_retrying(
        self,
        items: Sequence[Report | Rejected] | Batch,
        *,
        positions: Mapping[str, int],
        epoch: int,
        stop: threading.Event,
        on_retry: Callable[[int, DatabaseUnavailable], None] | None = None,
        committed: Mapping[str, int] | None = None,
    ) -> WriteResult:
        """write_batch, retried while the database is unavailable until `stop` is set.

        Backs off exponentially with jitter, 0.1 s up to 5 s. When `stop` is set the last
        DatabaseUnavailable is raised. StaleEpoch and other errors are raised at once, and so is
        StatementTimeout for a batch of more than one item: the same batch would meet it again,
        so the caller splits it. A single item that times out is retried like an outage.
        """
        splittable = len(items.items if isinstance(items, Batch) else items) > 1

        def retryable(error: BaseException) -> bool:
            if isinstance(error, StatementTimeout):
                return not splittable
            return isinstance(error, DatabaseUnavailable)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            # The reason is said once per change (`watch_availability`): a long outage's
            # retries, every few seconds, are only for the debug log after the first.
            log.log(
                logging.WARNING if state.attempt_number == 1 else logging.DEBUG,
                "database %s: attempt %d failed, retrying: %s",
                redacted(self.url),
                state.attempt_number,
                error,
            )
            if on_retry is not None and isinstance(error, DatabaseUnavailable):
                on_retry(state.attempt_number, error)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(retryable),
            wait=tenacity.wait_exponential_jitter(
                multiplier=RETRY_INITIAL_S, max=RETRY_MAX_S, jitter=RETRY_JITTER_S
            ),
            stop=lambda _state: stop.is_set(),
            sleep=stop.wait,  # wakes at once when stop is set
            before_sleep=before_sleep,
            reraise=True,
        )
        last: list[DatabaseUnavailable] = []

        def attempt() -> WriteResult:
            # `stop` may be set while waiting to retry: give up then, not one attempt later.
            if stop.is_set() and last:
                raise last[-1]
            try:
                return self.write_batch(
                    items, positions=positions, epoch=epoch, committed=committed
                )
            except DatabaseUnavailable as error:
                last[:] = [error]  # only the latest: an outage may last long
                raise

        return retrying(attempt)

    def _insert_whole(self, conn: Connection, items: list[Report], copy_rows: Any | None) -> int:
        """Insert reports; _RowRefused (the transaction is then to be rolled back) if the
        database refuses a row, or a COPY met a stored report_id."""
        if not items:
            return 0
        try:
            return self._dialect.insert_reports(conn, items, copy_rows)
        except Exception as error:
            if classify(error) is Failure.ROW:
                raise _RowRefused from error
            raise

    def _insert_isolating(
        self,
        conn: Connection,
        items: list[Report],
        copy_rows: Any | None,
    ) -> tuple[int, list[tuple[Report, str]]]:
        """Insert reports; those the database refuses are found by bisection and returned."""
        if not items:
            return 0, []
        try:
            with conn.begin_nested():
                return self._dialect.insert_isolating(conn, items, copy_rows), []
        except Exception as error:
            # Only an error about the rows is isolated; one about the database ends the
            # transaction (it is retried whole, or split by the caller when it timed out).
            if classify(error) is not Failure.ROW:
                raise
            if len(items) == 1:
                return 0, [(items[0], _refusal(error))]
        middle = len(items) // 2
        first, second = (
            (None, None) if copy_rows is None else (copy_rows[:middle], copy_rows[middle:])
        )
        stored_a, refused_a = self._insert_isolating(conn, items[:middle], first)
        stored_b, refused_b = self._insert_isolating(conn, items[middle:], second)
        return stored_a + stored_b, refused_a + refused_b

    def _open_batch(
        self,
        conn: Connection,
        epoch: int,
        positions: Mapping[str, int],
        committed: Mapping[str, int],
    ) -> None:
        """The fence, the positions and their check, ahead of the batch's rows; StaleEpoch or
        PositionsLost (the transaction is then rolled back) if either does not hold."""
        stored = self._dialect.open_batch(
            conn,
            cluster=self.cluster,
            epoch=epoch,
            journal=self.journal,
            positions=positions,
            check=list(committed),
        )
        if stored is None:
            raise self._stale(conn, epoch)
        for segment, byte in sorted(committed.items()):
            if stored.get(segment, 0) < byte:
                raise PositionsLost(self.journal, segment, stored.get(segment, 0), byte)

    # -- reading ------------------------------------------------------------------------------

    def positions(self) -> dict[str, int]:
        """This journal's stored positions: segment -> byte reached."""
        query = select(journal_positions.c.segment, journal_positions.c.byte).where(
            journal_positions.c.journal == self.journal
        )
        with translated(self.url), self._engine.connect() as conn:
            return {segment: byte for segment, byte in conn.execute(query)}

    def count_reports(self) -> int:
        return self._count(reports)

    def count_rejected(self) -> int:
        return self._count(rejected_reports)

    def _count(self, table: Any) -> int:
        with translated(self.url), self._engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(table)) or 0)

    def report_id_counts(self, report_ids: Iterable[str]) -> dict[str, int]:
        """How many rows each of `report_ids` has in `reports` (0 if missing) — for verify."""
        ids = list(dict.fromkeys(report_ids))
        counts = dict.fromkeys(ids, 0)
        query = (
            select(reports.c.report_id, func.count())
            .where(reports.c.report_id.in_(bindparam("ids", expanding=True)))
            .group_by(reports.c.report_id)
        )
        with translated(self.url), self._engine.connect() as conn:
            for start in range(0, len(ids), _ID_CHUNK):
                for report_id, count in conn.execute(
                    query, {"ids": ids[start : start + _ID_CHUNK]}
                ):
                    counts[report_id] = int(count)
        return counts

    def close(self) -> None:
        self._engine.dispose()
        self._probe_engine.dispose()


def _refusal(error: BaseException) -> str:
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    state = sqlstate_of(error)
    code = f" (SQLSTATE {state})" if state else ""
    return f"database refused: {type(cause).__name__}: {lines[0] if lines else ''}{code}"
