"""PostgreSQL: `ON CONFLICT` as SQLite, and COPY as the bulk path for reports (insert.py)."""

from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import Connection, exc
from sqlalchemy.dialects import postgresql

from storage.database import insert
from storage.database.dialects.sqlite import OnConflict
from storage.reports import Report


class PostgreSQL(OnConflict):
    module = postgresql
    copies = True

    def __init__(self) -> None:
        self._duplicates_seen = False

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
