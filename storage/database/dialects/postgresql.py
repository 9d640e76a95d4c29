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
        # One statement, one round trip, where the portable way takes three: the fence's upsert,
        # the positions' upsert (only once the fence is held, so that it never waits on a
        # positions row while holding nothing, the order every writer takes the locks in), and
        # the read of the positions as they were before this statement.
        segments = sorted(positions)
        claimed, names, bytes_ = conn.execute(
            _OPEN_BATCH,
            {
                "cluster": cluster,
                "epoch": epoch,
                "journal": journal,
                "segments": segments,
                "bytes": [positions[segment] for segment in segments],
                "check": sorted(check),
            },
        ).one()
        if not claimed:
            return None
        return dict(zip(names or [], bytes_ or [], strict=True))

    def bulk_rows(self, items: Sequence[Report]) -> insert.CopyRows:
        return insert.copy_rows(items)

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


_OPEN_BATCH = text(
    """
    WITH claim AS (
        INSERT INTO fence (cluster, epoch) VALUES (:cluster, :epoch)
        ON CONFLICT (cluster) DO UPDATE SET epoch = excluded.epoch
        WHERE fence.epoch <= excluded.epoch
        RETURNING epoch
    ), moved AS (
        INSERT INTO journal_positions (journal, segment, byte)
        SELECT :journal, p.segment, p.byte
        FROM unnest(CAST(:segments AS text[]), CAST(:bytes AS bigint[])) AS p (segment, byte)
        WHERE EXISTS (SELECT FROM claim)
        ON CONFLICT (journal, segment) DO UPDATE SET byte = excluded.byte
    )
    SELECT
        EXISTS (SELECT FROM claim),
        array_agg(segment ORDER BY segment),
        array_agg(byte ORDER BY segment)
    FROM journal_positions
    WHERE journal = :journal AND segment = ANY (CAST(:check AS text[]))
    """
)
