"""Which database errors are about the rows (rejected), the statement's time (split) or the
database (retried): by SQLSTATE class, then by the driver's class where there is none."""

import sqlite3

import psycopg
import pytest
from psycopg import errors as pg
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite

from storage.database.engine import Failure, classify, translated
from storage.errors import DatabaseError, DatabaseUnavailable, StatementTimeout


def wrapped(error: Exception) -> exc.DBAPIError:
    """The error as SQLAlchemy raises it from a statement."""
    dbapi = psycopg.Error if isinstance(error, psycopg.Error) else sqlite3.Error
    dialect = postgresql.dialect() if dbapi is psycopg.Error else sqlite.dialect()
    return exc.DBAPIError.instance("INSERT", None, error, dbapi, dialect=dialect)


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        # A value too large for an index row: psycopg calls it an OperationalError.
        (pg.ProgramLimitExceeded(), Failure.ROW),
        (pg.StatementTooComplex(), Failure.ROW),
        (pg.NumericValueOutOfRange(), Failure.ROW),
        (pg.UntranslatableCharacter(), Failure.ROW),
        (pg.CharacterNotInRepertoire(), Failure.ROW),
        (pg.StringDataRightTruncation(), Failure.ROW),
        (pg.NotNullViolation(), Failure.ROW),
        (pg.CheckViolation(), Failure.ROW),
        (pg.QueryCanceled(), Failure.TIMEOUT),
        (pg.AdminShutdown(), Failure.UNAVAILABLE),
        (pg.CannotConnectNow(), Failure.UNAVAILABLE),
        (pg.SerializationFailure(), Failure.UNAVAILABLE),
        (pg.DeadlockDetected(), Failure.UNAVAILABLE),
        (pg.ReadOnlySqlTransaction(), Failure.UNAVAILABLE),  # a standby, after a failover
        (pg.DiskFull(), Failure.UNAVAILABLE),
        (pg.TooManyConnections(), Failure.UNAVAILABLE),
        (pg.LockNotAvailable(), Failure.UNAVAILABLE),
        (pg.IdleInTransactionSessionTimeout(), Failure.UNAVAILABLE),
        (pg.UndefinedTable(), Failure.OTHER),
        (pg.InsufficientPrivilege(), Failure.OTHER),
        # Without a SQLSTATE: psycopg refusing a value, or losing its connection.
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), Failure.ROW),
        (psycopg.OperationalError("server closed the connection"), Failure.UNAVAILABLE),
        (sqlite3.DataError("string or blob too big"), Failure.ROW),
        (sqlite3.IntegrityError("NOT NULL constraint failed"), Failure.ROW),
        (sqlite3.OperationalError("database is locked"), Failure.UNAVAILABLE),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value.value,
)
def test_driver_errors(error: Exception, failure: Failure) -> None:
    assert classify(wrapped(error)) is failure


def test_values_the_driver_cannot_bind_are_about_the_row() -> None:
    assert classify(OverflowError("Python int too large")) is Failure.ROW
    assert classify(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates")) is Failure.ROW
    assert classify(RuntimeError("a bug")) is Failure.OTHER


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (pg.QueryCanceled(), StatementTimeout),
        (pg.SerializationFailure(), DatabaseUnavailable),
        (pg.ProgramLimitExceeded(), DatabaseError),
    ],
)
def test_translated_keeps_the_sqlstate(error: Exception, raised: type) -> None:
    with pytest.raises(raised) as caught, translated("postgresql://u:secret@h/db"):
        raise wrapped(error)
    assert type(caught.value) is raised
    assert caught.value.sqlstate == error.sqlstate
    assert "secret" not in str(caught.value)
