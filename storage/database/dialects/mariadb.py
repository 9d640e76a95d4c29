"""MariaDB (and MySQL), through PyMySQL: the fence by a locking read, rows and positions by
`INSERT ... ON DUPLICATE KEY UPDATE`, and its error codes sorted into the row's fault and the
database's.

Rows go in with `ON DUPLICATE KEY UPDATE key = key`, not `INSERT IGNORE`: IGNORE turns every
error of the statement into a warning, so a value out of range or too long would be stored
clamped or cut instead of refused, and the poison row never found. The no-op update touches only
the duplicate-key case; strict mode (engine.py) keeps every other error an error. The engine
leaves out the FOUND_ROWS client flag, so a duplicate counts 0 affected rows and a new row 1.

The bulk path is PyMySQL's executemany, which sends an INSERT of a whole batch as multi-row
statements of up to 1 MB each: one round trip per megabyte, not per report. The reports' values
are made before the transaction (`bulk_rows`: the producer's JSON text as the payload, as COPY
takes it on PostgreSQL) and handed to the driver as they are, past SQLAlchemy's per-value
processing; bench/bench_sink.py measures what that saves.

Transactions run at READ COMMITTED (engine.py). The fence's locking read sees the newest
committed epoch at any level; READ COMMITTED keeps InnoDB from taking gap locks on the unique
indexes of reports, which at REPEATABLE READ make two drainers' inserts deadlock.
"""

from collections.abc import Sequence
from typing import Any

import pymysql
from sqlalchemy import Connection, Executable, Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql

from storage.database.dialects.base import Dialect
from storage.database.rows import REPORT_COLUMNS
from storage.database.schema import fence, journal_positions, reports
from storage.reports import Report, payload_text, typed_values, utc

# MariaDB's error numbers (its manual's "MariaDB Error Codes"). The row's fault: no retry can
# fix it. NULL in a NOT NULL column, a duplicate key (only reachable through another unique
# index), a value truncated, out of range, not a date, text invalid in utf8mb4, a row too
# large, a CHECK (JSON's json_valid) failed, a trigger's SIGNAL.
ROW_ERRORS = frozenset(
    {1048, 1062, 1118, 1264, 1265, 1292, 1300, 1366, 1367, 1406, 1416, 1690, 3140, 4025, 1644}
)
# The database's state, now: lock wait timeout, deadlock, too many connections, shutting down,
# a killed connection, out of memory, disk or table full, read-only (a replica after a failover),
# and the client's own codes for a connection refused, gone away or lost.
UNAVAILABLE_ERRORS = frozenset(
    {1205, 1213, 1040, 1053, 1927, 1037, 1041, 1021, 1114, 1290, 1792, 1836, 4031}
    | {2002, 2003, 2006, 2013, 2055}
)
# max_statement_time exceeded (MariaDB), MAX_EXECUTION_TIME (MySQL).
TIMEOUT_ERRORS = frozenset({1969, 3024})

# The bulk insert of reports, in the form PyMySQL's executemany makes multi-row: VALUES with one
# placeholder per column, then ON DUPLICATE KEY UPDATE.
INSERT_REPORTS = (
    f"INSERT INTO {reports.name} ({', '.join(REPORT_COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * len(REPORT_COLUMNS))})"
    " ON DUPLICATE KEY UPDATE report_id = report_id"
)


def error_number(error: BaseException) -> int | None:
    """The MariaDB error number of a PyMySQL error, wrapped by SQLAlchemy or not."""
    cause = getattr(error, "orig", None) or error
    if type(cause).__module__.split(".")[0] != "pymysql":
        return None
    args = getattr(cause, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class MariaDB(Dialect):
    def fence_insert(self) -> Executable:
        # Two first writers may both find no row (READ COMMITTED takes no gap lock): the second
        # waits on the first's new row, then updates nothing.
        return mysql.insert(fence).on_duplicate_key_update(cluster=fence.c.cluster)

    def insert_many(
        self, conn: Connection, table: Table, rows: Sequence[dict[str, Any]], key: str
    ) -> int:
        if not rows:
            return 0
        statement = mysql.insert(table).on_duplicate_key_update({key: table.c[key]})
        return conn.execute(statement, list(rows)).rowcount

    def upsert_positions(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        statement = mysql.insert(journal_positions)
        statement = statement.on_duplicate_key_update(byte=statement.inserted.byte)
        conn.execute(statement, rows)

    def bulk_rows(self, items: Sequence[Report]) -> list[Any] | None:
        return [
            (
                report.report_id,
                report.kind,
                report.queue,
                payload_text(report),
                utc(report.received_at),
                *typed_values(report.kind, report.payload),
            )
            for report in items
        ]

    def insert_reports(
        self, conn: Connection, items: Sequence[Report], bulk: list[Any] | None
    ) -> int:
        if bulk is None:
            return super().insert_reports(conn, items, bulk)
        if not bulk:
            return 0
        driver = conn.connection.driver_connection  # pymysql.Connection, in this transaction
        assert driver is not None
        try:
            with driver.cursor() as cursor:
                return cursor.executemany(INSERT_REPORTS, bulk) or 0
        except pymysql.Error as error:
            # Wrapped as SQLAlchemy would have, so that the sink classifies it the same way.
            raise sa_exc.DBAPIError.instance(
                "INSERT reports", None, error, pymysql.Error, dialect=conn.dialect
            ) from error
