"""PostgreSQL: `ON CONFLICT` as SQLite, and COPY as the bulk path for reports (insert.py)."""

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from sqlalchemy import Connection, exc, text
from sqlalchemy.dialects import postgresql

from storage.database import insert
from storage.database.dialects.sqlite import OnConflict
from storage.reports import Report


class PostgreSQL(OnConflict):
    module = postgresql
    copies = True

    def __init__(self) -> None:
        self._duplicates_seen = False

    def open_batch(
        self,
        conn: Connection,
        *,
        cluster: str,
        epoch: int,
        journal: str,
        positions: Mapping[str, int],
        check: Sequence[str],
    ) -> dict[str, int] | None:
        # The fence first, on its own: a writer may wait on its row for the holder's commit, and
        # what is read after the wait must be read by a statement begun after it (at READ
        # COMMITTED a statement sees what was committed when it began). Then one statement, where
        # the portable way takes two: the positions' upsert, and the read of the checked ones as
        # they were before it. Every writer so takes the fence before any position row.
        if not self.claim_fence(conn, cluster, epoch):
            return None
        segments = sorted(positions)
        names, bytes_ = conn.execute(
            _MOVE_POSITIONS,
            {
                "journal": journal,
                "segments": segments,
                "bytes": [positions[segment] for segment in segments],
                "check": sorted(check),
            },
        ).one()
        return dict(zip(names or [], bytes_ or [], strict=True))

    def bulk_rows(self, items: Sequence[Report]) -> insert.CopyRows:
        return insert.copy_rows(items)

    def join_bulk(self, parts: Sequence[insert.CopyRows]) -> insert.CopyRows:
        return insert.CopyRows.join(parts)

    def insert_isolating(self, conn: Connection, items: Sequence[Report], bulk: Any | None) -> int:
        if bulk is None:
            return super().insert_isolating(conn, items, bulk)
        # A part COPYed straight in would fail on a stored id as on a refused row, and be taken
        # for one: the staged way skips stored ids.
        return insert.copy_reports_staged(conn, bulk)

    def insert_reports(self, conn: Connection, items: Sequence[Report], bulk: Any | None) -> int:
        if bulk is None:
            return super().insert_reports(conn, items, bulk)
        # Duplicates come in runs (a redelivery, a replay): after a batch with some, the next
        # goes the staged way at once rather than after a COPY that fails on the first one.
        copy = insert.copy_reports_staged if self._duplicates_seen else insert.copy_reports
        try:
            stored = copy(conn, bulk)
        except exc.IntegrityError as error:
            # A report_id stored already: the sink writes the batch again in a new transaction,
            # isolating, which goes the staged way; so does the next batch.
            if isinstance(error.orig, psycopg.errors.UniqueViolation):
                self._duplicates_seen = True
            raise
        self._duplicates_seen = stored < len(bulk)
        return stored


_MOVE_POSITIONS = text(
    """
    WITH moved AS (
        INSERT INTO journal_positions (journal, segment, byte)
        SELECT :journal, p.segment, p.byte
        FROM unnest(CAST(:segments AS text[]), CAST(:bytes AS bigint[])) AS p (segment, byte)
        ON CONFLICT (journal, segment) DO UPDATE SET byte = excluded.byte
    )
    SELECT array_agg(segment ORDER BY segment), array_agg(byte ORDER BY segment)
    FROM journal_positions
    WHERE journal = :journal AND segment = ANY (CAST(:check AS text[]))
    """
)
