"""Inserting report rows, skipping those already stored: the ways the sink can do it.

Each function returns how many rows it stored. On PostgreSQL the sink uses `copy_reports`: COPY
straight into `reports`, which is all a batch of new reports needs. When one of them is stored
already the COPY fails on the unique key, the sink rolls the transaction back and the batch goes
`copy_reports_staged`'s way instead: COPY into a staging table, then one INSERT ... SELECT ... ON
CONFLICT DO NOTHING (bench/bench_sink.py measured that about 2x as fast as `executemany_reports`,
psycopg's executemany in one pipeline, for batches of 1000). The sink goes the staged way
straight away after a batch that held duplicates. The other databases' ways are in
storage.database.dialects.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg._copy_base import format_row_text
from psycopg.adapt import Transformer
from psycopg.types.json import Jsonb
from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc

from storage.database.rows import REPORT_COLUMNS
from storage.database.schema import reports
from storage.reports import Report, payload_text, typed_values, utc

_STAGING = "reports_in"
_STAGING_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGING} (
    report_id text, kind text, queue text, payload jsonb, received_at timestamptz,
    call_id text, component text, tenant text, started_at timestamptz, ended_at timestamptz,
    interval_start timestamptz, arrivals bigint, peak bigint, metric text, value double precision
) ON COMMIT DELETE ROWS
"""
_COLUMN_LIST = ", ".join(REPORT_COLUMNS)


def copy_values(reports: Sequence[Report]) -> list[list[Any]]:
    """The reports as COPY takes them, in REPORT_COLUMNS order: the payload as JSON text (the
    producer's, where the report has it, rather than encoded again), times as ISO 8601 text, the
    typed columns as the journal record carries them where it does.

    Pure work, so that a caller can do it outside the transaction: formatting times is most of
    what psycopg's COPY would otherwise do per row.
    """
    out = []
    last_received: tuple[Any, str | None] = (None, None)
    for report in reports:
        columns = report.columns
        if columns is None:
            columns = [
                value.isoformat() if isinstance(value, datetime) else value
                for value in typed_values(report.kind, report.payload)
            ]
        # The reports of one intake batch share their received_at.
        received = report.received_at
        if received is not last_received[0]:
            last_received = (received, utc(received).isoformat())
        payload = payload_text(report)
        head = [report.report_id, report.kind, report.queue, payload, last_received[1]]
        out.append(head + columns)
    return out


@dataclass(frozen=True)
class CopyRows:
    """A batch's rows for COPY (`copy_values`), one a report and in the batch's order, so that a
    part of them is the same part of its reports; and, where `copy_text` could make it, their
    COPY text: made with the rows, outside the transaction, so that the COPY itself is one
    write. A part of them is rows alone (written row by row); joined ones keep their text.

    Every row goes to the database, a report sent twice in the batch too: it fails the COPY on
    the unique key and the batch goes the staged way, which skips it. Dropped here instead, a
    second copy the database would refuse (a poison under a stored id) would be a duplicate or
    a refused report depending on the rest of its batch."""

    rows: list[list[Any]]
    text: bytes | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> "CopyRows":
        return CopyRows(self.rows[part])

    @staticmethod
    def join(parts: Sequence["CopyRows"]) -> "CopyRows":
        """The rows of `parts` in their order, with their COPY text where each has one (a row
        of COPY text ends with its newline, so the texts join as they are)."""
        texts = [part.text for part in parts]
        text = None if any(t is None for t in texts) else b"".join(texts)  # type: ignore[arg-type]
        return CopyRows([row for part in parts for row in part.rows], text)


def copy_rows(reports: Sequence[Report]) -> CopyRows:
    """The reports' `CopyRows`, with their COPY text."""
    rows = copy_values(reports)
    return CopyRows(rows, copy_text(rows))


def copy_text(rows: Sequence[Sequence[Any]]) -> bytes | None:
    """`rows` in COPY's text format (UTF-8), made by psycopg's own row formatting (in C in its
    binary build), which `write_row` uses too; None if psycopg cannot adapt a value (a dict, or
    text UTF-8 cannot encode): those rows go row by row, and psycopg refuses that one alone."""
    out = bytearray()
    transformer = Transformer()  # no connection: UTF-8, the only encoding the text is used for
    try:
        for row in rows:
            format_row_text(row, transformer, out)
    except (psycopg.Error, UnicodeEncodeError):
        return None
    return bytes(out)


def copy_reports(conn: Connection, values: CopyRows | Sequence[Sequence[Any]]) -> int:
    """COPY `values` (`copy_rows`, or rows made by `copy_values`) straight into `reports`: an
    IntegrityError (UniqueViolation) if a report_id is stored already or twice among them, which
    leaves the transaction to be rolled back."""
    return _on_driver(conn, "COPY reports", _copy_new, values)


def copy_reports_staged(conn: Connection, values: CopyRows | Sequence[Sequence[Any]]) -> int:
    """COPY into a session-local staging table, then one INSERT ... SELECT ... ON CONFLICT: of
    rows sharing an id, the first is kept."""
    return _on_driver(conn, "COPY reports_in", _copy_staged, values)


def _on_driver(
    conn: Connection,
    what: str,
    method: Callable[[psycopg.Connection, CopyRows], int],
    values: CopyRows | Sequence[Sequence[Any]],
) -> int:
    if not values:
        return 0
    if not isinstance(values, CopyRows):
        values = CopyRows(list(values))
    driver = conn.connection.driver_connection  # psycopg.Connection, in this transaction
    assert driver is not None
    try:
        return method(driver, values)
    except psycopg.Error as error:
        # Wrapped as SQLAlchemy would have, so that the sink classifies it the same way.
        raise sa_exc.DBAPIError.instance(
            what, None, error, psycopg.Error, dialect=conn.dialect
        ) from error


def _copy_new(driver: psycopg.Connection, values: CopyRows) -> int:
    text = values.text if driver.info.encoding == "utf-8" else None
    with driver.cursor() as cursor:
        with cursor.copy(f"COPY {reports.name} ({_COLUMN_LIST}) FROM STDIN") as copy:
            if text is not None:
                copy.write(text)
            else:
                for row in values.rows:
                    copy.write_row(row)
    return len(values)


def _copy_staged(driver: psycopg.Connection, values: CopyRows) -> int:
    with driver.cursor() as cursor:
        # Created if missing each time: a staging table made inside a savepoint that was rolled
        # back is gone again.
        cursor.execute(_STAGING_DDL)
        with cursor.copy(f"COPY {_STAGING} ({_COLUMN_LIST}) FROM STDIN") as copy:
            for row in values.rows:
                copy.write_row(row)
        cursor.execute(
            f"INSERT INTO {reports.name} ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM {_STAGING}"
            " ON CONFLICT (report_id) DO NOTHING"
        )
        stored = cursor.rowcount
        # Emptied now, not at commit: the isolation of refused rows copies again in this
        # transaction.
        cursor.execute(f"DELETE FROM {_STAGING}")
    return stored


def executemany_reports(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """psycopg's executemany, which sends the whole batch in one pipeline."""
    if not rows:
        return 0
    driver = conn.connection.driver_connection
    assert driver is not None
    placeholders = ", ".join(["%s"] * len(REPORT_COLUMNS))
    statement = (
        f"INSERT INTO {reports.name} ({_COLUMN_LIST}) VALUES ({placeholders})"
        " ON CONFLICT (report_id) DO NOTHING"
    )
    params = [tuple(_pipeline_value(row[c]) for c in REPORT_COLUMNS) for row in rows]
    try:
        with driver.cursor() as cursor:
            cursor.executemany(statement, params)
            return cursor.rowcount
    except psycopg.Error as error:
        raise sa_exc.DBAPIError.instance(
            "INSERT reports", None, error, psycopg.Error, dialect=conn.dialect
        ) from error


def _pipeline_value(value: Any) -> Any:
    return Jsonb(value) if isinstance(value, dict) else value
