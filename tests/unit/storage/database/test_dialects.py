"""The dialect seam without a server: each database's statements compiled by SQLAlchemy, and
MariaDB's error numbers sorted as the sink needs them.

SQL Server and Oracle are compiled only; MariaDB, PostgreSQL and SQLite also run in
tests/integration/test_sink.py.
"""

from datetime import UTC, datetime

import pymysql
import pytest
from sqlalchemy import exc
from sqlalchemy.dialects import mssql, mysql, oracle

from storage.database import dialects
from storage.database.engine import Failure, classify, dialect_of
from storage.database.rows import REPORT_COLUMNS, report_row
from storage.database.schema import fence, journal_positions, reports
from storage.reports import Report

COMPILERS = {"mssql": mssql.dialect(), "oracle": oracle.dialect(), "mariadb": mysql.dialect()}


def sql(name: str, statement: object) -> str:
    return " ".join(str(statement.compile(dialect=COMPILERS[name])).split())  # type: ignore[attr-defined]


def test_sql_server_locks_the_fence_row_and_the_key_ranges_it_probes() -> None:
    d = dialects.for_name("mssql")
    assert sql("mssql", d.fence_lock("c")) == (
        "SELECT fence.epoch FROM fence WITH (UPDLOCK, HOLDLOCK, ROWLOCK)"
        " WHERE fence.cluster = :cluster_1"
    )
    assert sql("mssql", d.fence_insert()) == (
        "INSERT INTO fence (cluster, epoch) SELECT :cluster AS anon_1, :epoch AS anon_2"
        " WHERE NOT (EXISTS (SELECT :param_1 AS anon_3 FROM fence WITH (UPDLOCK, HOLDLOCK)"
        " WHERE fence.cluster = :cluster))"
    )
    assert sql("mssql", d.fence_raise("c", 2)) == (
        "UPDATE fence SET epoch=:epoch WHERE fence.cluster = :cluster_1 AND fence.epoch <= :epoch_1"
    )
    insert = sql("mssql", d.insert_missing(reports, ["report_id"], ["report_id", "kind"]))
    assert insert.startswith("INSERT INTO reports (report_id, kind) SELECT :report_id")
    assert "FROM reports WITH (UPDLOCK, HOLDLOCK) WHERE reports.report_id = :report_id" in insert


def test_oracle_locks_for_update_and_selects_from_dual() -> None:
    d = dialects.for_name("oracle")
    assert sql("oracle", d.fence_lock("c")).endswith(
        'WHERE fence."cluster" = :cluster_1 FOR UPDATE'
    )
    positions = sql("oracle", d.insert_missing(journal_positions, ["journal", "segment"]))
    assert positions == (
        "INSERT INTO journal_positions (journal, segment, byte) SELECT :journal AS anon_1,"
        " :segment AS anon_2, :byte AS anon_3 FROM DUAL WHERE NOT (EXISTS (SELECT :param_1 AS"
        " anon_4 FROM journal_positions WHERE journal_positions.journal = :journal AND"
        " journal_positions.segment = :segment))"
    )


def test_mariadb_skips_stored_keys_without_insert_ignore() -> None:
    d = dialects.for_name("mariadb")
    assert sql("mariadb", d.fence_lock("c")).endswith("FOR UPDATE")
    assert sql("mariadb", d.fence_insert()) == (
        "INSERT INTO fence (cluster, epoch) VALUES (%s, %s)"
        " ON DUPLICATE KEY UPDATE cluster = fence.cluster"
    )
    assert d.copies is False and d.bulk_rows([]) == []
    assert dialects.for_name("mysql").__class__ is d.__class__
    assert fence.c.cluster.type.dialect_impl(COMPILERS["mariadb"]).length == 512


def test_mariadb_bulk_rows_are_the_report_rows_with_the_producers_text() -> None:
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    payload = {"call_id": "c1", "component": "mcp", "metric": "mos", "value": 4.25}
    text = '{"call_id": "c1", "component": "mcp", "metric": "mos", "value": 4.250}'
    with_text = Report("r1", "sq", "q.sq", payload, at, text)
    without = Report("r2", "sq", "q.sq", payload, at)
    first, second = dialects.for_name("mariadb").bulk_rows([with_text, without])
    assert dict(zip(REPORT_COLUMNS, first, strict=True)) == report_row(with_text) | {
        "payload": text
    }
    assert second[REPORT_COLUMNS.index("payload")] == (
        '{"call_id":"c1","component":"mcp","metric":"mos","value":4.25}'
    )


@pytest.mark.parametrize(
    ("number", "sqlstate", "failure"),
    [
        (1406, "22001", Failure.ROW),  # data too long
        (1264, "22003", Failure.ROW),  # out of range
        (4025, "23000", Failure.ROW),  # CHECK (json_valid) failed
        (1366, "22007", Failure.ROW),  # text invalid in utf8mb4
        (1205, "HY000", Failure.UNAVAILABLE),  # lock wait timeout
        (1213, "40001", Failure.UNAVAILABLE),  # deadlock
        (1290, "HY000", Failure.UNAVAILABLE),  # read-only
        (2013, None, Failure.UNAVAILABLE),  # connection lost
        (1969, "70100", Failure.TIMEOUT),  # max_statement_time
        (1146, "42S02", Failure.OTHER),  # no such table: a bug, not a retry
    ],
)
def test_mariadb_errors_are_classified_by_number(
    number: int, sqlstate: str | None, failure: Failure
) -> None:
    error_class = pymysql.err.OperationalError if number >= 2000 else pymysql.err.DatabaseError
    driver_error = error_class(number, "message", sqlstate=sqlstate)
    wrapped = exc.DBAPIError.instance("INSERT", None, driver_error, pymysql.err.Error)
    assert classify(wrapped) is failure


def test_mariadb_urls_are_supported() -> None:
    assert dialect_of("mysql+pymysql://u@h/db") == "mysql"
    assert dialect_of("mariadb+pymysql://u@h/db") == "mysql"
    with pytest.raises(ValueError):
        dialects.for_name("firebird")
