"""Inserting report rows, skipping those already stored: the ways the sink can do it.

Each function returns how many rows it stored. On PostgreSQL the sink uses `copy_reports` (COPY
into a staging table, then one INSERT ... SELECT ... ON CONFLICT): bench/bench_sink.py measured
it about 1.6x as fast as `executemany_reports` (psycopg's executemany, one pipeline per batch)
for batches of 1000. `insert_many` works on both dialects and is what SQLite uses.
"""

import json
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from storage.database.rows import REPORT_COLUMNS
from storage.database.schema import reports

_STAGING = "reports_in"
_STAGING_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGING} (
    report_id text, kind text, queue text, payload jsonb, received_at timestamptz,
    call_id text, component text, tenant text, started_at timestamptz, ended_at timestamptz,
    interval_start timestamptz, arrivals bigint, peak bigint, metric text, value double precision
) ON COMMIT DELETE ROWS
"""
_COLUMN_LIST = ", ".join(REPORT_COLUMNS)
_PAYLOAD = REPORT_COLUMNS.index("payload")


def insert_many(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], key: str) -> int:
    if not rows:
        return 0
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).on_conflict_do_nothing(index_elements=[key])
    # Counted by RETURNING: the driver's executemany rowcount does not reach SQLAlchemy's result.
    # SQLAlchemy sends it as multi-row VALUES pages ("insertmanyvalues").
    result = conn.execute(statement.returning(table.c[key]), list(rows))
    return len(result.all())


def copy_reports(
    conn: Connection,
    rows: Sequence[dict[str, Any]],
    texts: Sequence[str | None] | None = None,
) -> int:
    """COPY into a session-local staging table, then one INSERT ... SELECT ... ON CONFLICT.

    `texts` are the payloads' JSON texts as the producers sent them, where known: copied as
    they are rather than encoded again.
    """
    if not rows:
        return 0
    driver = conn.connection.driver_connection  # psycopg.Connection, in this transaction
    assert driver is not None
    try:
        return _copy(driver, rows, texts or [None] * len(rows))
    except psycopg.Error as error:
        # Wrapped as SQLAlchemy would have, so that the sink classifies it the same way.
        raise sa_exc.DBAPIError.instance(
            "COPY reports", None, error, psycopg.Error, dialect=conn.dialect
        ) from error


def _copy(
    driver: psycopg.Connection, rows: Sequence[dict[str, Any]], texts: Sequence[str | None]
) -> int:
    with driver.cursor() as cursor:
        # Created if missing each time: a staging table made inside a savepoint that was rolled
        # back is gone again.
        cursor.execute(_STAGING_DDL)
        with cursor.copy(f"COPY {_STAGING} ({_COLUMN_LIST}) FROM STDIN") as copy:
            for row, text in zip(rows, texts, strict=True):
                values = [row[c] for c in REPORT_COLUMNS]
                values[_PAYLOAD] = text if text is not None else _copy_value(values[_PAYLOAD])
                copy.write_row(values)
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


def _copy_value(value: Any) -> Any:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else value
