"""Engines for the supported databases, and the translation of their errors.

PostgreSQL goes through psycopg 3; MariaDB (or MySQL) through PyMySQL; SQLite is the embedded
default, in WAL mode with one writer. The statements that differ between them are in
storage.database.dialects.
"""

import contextlib
import enum
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from pymysql.constants import CLIENT
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url

from storage.database.dialects import mariadb
from storage.errors import DatabaseError, DatabaseUnavailable, StatementTimeout

CONNECT_TIMEOUT_S = 5
# A paused or partitioned writer must not keep the fence row locked: the server ends its
# transaction, so the writer of a newer epoch is never blocked by it for long.
IDLE_IN_TRANSACTION_TIMEOUT_S = 5
# A database that accepts connections but does not answer is an outage, not a wait for ever.
STATEMENT_TIMEOUT_S = 10
SQLITE_BUSY_TIMEOUT_S = 5
# A pooled connection idle longer than this is pinged before it is used again.
PING_IDLE_S = 1.0
REASON_MAX_CHARS = 300
# The connection parameters libpq itself keeps out of sight (its "*" display flag).
SECRET_PARAMETERS = frozenset({"password", "sslpassword", "oauth_client_secret"})
_AUTHORITY_PASSWORD = re.compile(r"^([\w+]+://[^:/]*:)[^@]*@")
_SECRET_QUERY = re.compile(
    r"([?&](?:" + "|".join(sorted(SECRET_PARAMETERS)) + r")=)[^&#]*", re.IGNORECASE
)


def dialect_of(url: str) -> str:
    try:
        backend = make_url(url).get_backend_name()
    except exc.ArgumentError:
        raise DatabaseError(f"not a database URL: {redacted(url)}") from None
    if backend == "mariadb":
        backend = "mysql"
    if backend not in ("postgresql", "mysql", "sqlite"):
        raise DatabaseError(
            f"unsupported database {backend!r}: use postgresql, mariadb (mysql+pymysql) or sqlite"
        )
    return backend


def redacted(url: str) -> str:
    """`url` for a log line or an error: its password and secret query parameters as ***."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        return "<unparsable URL>"
    # Edited as text: rendering the parsed URL would reorder and escape its query.
    if parsed.password is not None:
        url = _AUTHORITY_PASSWORD.sub(r"\1***@", url, count=1)
    return _SECRET_QUERY.sub(r"\1***", url)


def connection_problem(value: str) -> str | None:
    """Why `value` (a password, or a part of a URL) cannot reach the database unchanged, or
    None; the reason never repeats it. libpq reads its connection string as C text, which ends at
    a NUL: what follows (the rest of a password, the port, the options) would be dropped, and a
    password's first part sent to the default port. Blanks and line breaks at either end, quotes
    and backslashes arrive as they are."""
    if "\0" in value:
        return "holds a NUL character, at which libpq's connection string would end"
    return None


def make_engine(
    url: str, *, timeout_s: float | None = None, password: Callable[[], str] | None = None
) -> Engine:
    """An engine for `url`; `timeout_s` shortens the connect and statement timeouts (probes).
    With `password`, each new connection logs in with what it returns then, not with the URL's
    password: a password rotated in the meantime is taken without a new engine. It raises
    DatabaseUnavailable when it has none to give; that connection then fails as one to an
    unreachable database does (SQLite has no password: it is not asked)."""
    backend = dialect_of(url)
    if backend == "sqlite":
        return _sqlite_engine(url, timeout_s)
    engine = (
        _mariadb_engine(url, timeout_s) if backend == "mysql" else _postgres_engine(url, timeout_s)
    )
    if password is not None:
        _log_in_with(engine, password)
    return engine


def _log_in_with(engine: Engine, password: Callable[[], str]) -> None:
    @event.listens_for(engine, "do_connect")
    def _password(dialect: Any, _record: Any, _args: Any, params: Any) -> None:
        try:
            params["password"] = password()
        except DatabaseUnavailable as error:
            # As the driver's own error, so that SQLAlchemy wraps it, `watch_availability`
            # hears of it and callers retry it like any connection that failed.
            raise dialect.loaded_dbapi.OperationalError(str(error)) from None


def _postgres_engine(url: str, timeout_s: float | None) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    connect_s = timeout_s or CONNECT_TIMEOUT_S
    statement_ms = int((timeout_s or STATEMENT_TIMEOUT_S) * 1000)
    options = (
        f"-c statement_timeout={statement_ms}"
        f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_S * 1000}"
    )
    connect_args: dict[str, Any] = {
        "connect_timeout": max(1, int(connect_s)),
        "options": options,
        # Notice a peer that vanished without a FIN (a partition) within about half a minute.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    engine = create_engine(
        parsed,
        connect_args=connect_args,
        pool_size=2,
        max_overflow=2,
        # A report's values never reach an error message or a log line.
        hide_parameters=True,
    )
    _ping_when_idle(engine)
    return engine


def _mariadb_engine(url: str, timeout_s: float | None) -> Engine:
    parsed = make_url(url)
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername=f"{parsed.drivername}+pymysql")
    if "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    connect_s = max(1, int(timeout_s or CONNECT_TIMEOUT_S))
    statement_s = timeout_s or STATEMENT_TIMEOUT_S
    session = {
        # Strict: a value that does not fit is an error (the row's fault), never a warning and
        # a clamped or cut value stored.
        "sql_mode": "'STRICT_ALL_TABLES,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO'",
        "time_zone": "'+00:00'",  # stored_at's now() in UTC, as the other times
        "max_statement_time": f"{statement_s:g}",
        # A writer paused or cut off with the fence row locked loses its transaction.
        "idle_transaction_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_S),
        "innodb_lock_wait_timeout": str(max(1, int(statement_s))),
    }
    init = "SET SESSION " + ", ".join(f"{key} = {value}" for key, value in session.items())
    engine = create_engine(
        parsed,
        connect_args={
            "connect_timeout": connect_s,
            # A peer that vanished without a FIN (a partition) ends a read or write in time.
            "read_timeout": int(statement_s) + 20,
            "write_timeout": int(statement_s) + 20,
            "init_command": init,
        },
        isolation_level="READ COMMITTED",
        pool_size=2,
        max_overflow=2,
        hide_parameters=True,
    )

    _ping_when_idle(engine)

    @event.listens_for(engine, "do_connect")
    def _without_found_rows(_dialect: Any, _record: Any, _args: Any, params: Any) -> None:
        # SQLAlchemy asks for FOUND_ROWS, with which a duplicate left as it was by
        # ON DUPLICATE KEY UPDATE counts as a row: without it, rowcount is the rows stored.
        params["client_flag"] = params.get("client_flag", 0) & ~CLIENT.FOUND_ROWS

    return engine


def _ping_when_idle(engine: Engine) -> None:
    """A pooled connection is pinged before it is used again only if it has been idle longer
    than PING_IDLE_S (SQLAlchemy's pool_pre_ping pings every time: a round trip more for every
    batch the drainer writes). A database restarted meanwhile leaves the connection dead: the
    ping fails and the pool connects again. One that died within the moment fails its first
    statement instead, which invalidates the pool, and the caller retries, as after any outage."""

    def used(_dbapi_connection: Any, record: Any, *_: Any) -> None:
        record.info["used_at"] = time.monotonic()

    event.listen(engine, "connect", used)
    event.listen(engine, "checkin", used)

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("used_at", -math.inf) <= PING_IDLE_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception:  # whatever the driver raises, the connection is not to be used
            alive = False
        if not alive:
            raise exc.DisconnectionError("the database did not answer a ping")
        record.info["used_at"] = time.monotonic()


def _sqlite_engine(url: str, timeout_s: float | None) -> Engine:
    engine = create_engine(
        url, connect_args={"timeout": timeout_s or SQLITE_BUSY_TIMEOUT_S}, hide_parameters=True
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are begun by hand below, so that SAVEPOINT works and a write transaction
        # takes the lock at BEGIN rather than failing to upgrade half way through.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed batch survives power loss, since its journal segment may be deleted.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()
        _private(engine.url.database)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _private(database: str | None) -> None:
    # The database holds call records: readable by its owner alone, whatever the umask, as the
    # journal is. The WAL and shared-memory files beside it hold the same rows.
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    for path in (database, f"{database}-wal", f"{database}-shm"):
        try:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
        except OSError:
            pass  # not made yet, or not ours to change: the journal check still guards its folder


class Failure(enum.Enum):
    """What a database error says about a write, and so what to do with it."""

    ROW = "row"  # these rows: a retry gets the same answer, so they are refused, one by one
    TIMEOUT = "timeout"  # a statement ran too long: a smaller batch may pass
    UNAVAILABLE = "unavailable"  # the database, now: retry the same write later
    OTHER = "other"  # neither (a bug, a missing grant): raised as it is


# SQLSTATE classes (PostgreSQL's manual, appendix A) that speak of the data, never of the
# database's state: data exception (a value out of range, text invalid in the encoding),
# integrity constraint violation, program limit exceeded (a value too large for an index row).
_ROW_CLASSES = frozenset({"22", "23", "54"})
# Classes that speak of the database's state: connection exception, invalid transaction state
# (a read-only standby after a failover), transaction rollback (serialization failure,
# deadlock), insufficient resources, operator intervention (shutdown, a cancel), system error.
_UNAVAILABLE_CLASSES = frozenset({"08", "25", "40", "53", "57", "58"})
_UNAVAILABLE_STATES = frozenset({"55P03"})  # lock_not_available
_QUERY_CANCELED = "57014"  # what statement_timeout raises


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE of a driver error (psycopg's), wrapped by SQLAlchemy or not."""
    cause = getattr(error, "orig", None) or error
    state = getattr(cause, "sqlstate", None)
    return state if isinstance(state, str) else None


def classify(error: BaseException) -> Failure:
    """Whether `error` is about the rows written, the statement's time, or the database."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return Failure.UNAVAILABLE
    number = mariadb.error_number(error)
    if number is not None:
        # MariaDB's SQLSTATEs are coarse (HY000 for a lock wait timeout and many more): its
        # error numbers say it, and an unknown one falls through to SQLSTATE and class below.
        if number in mariadb.TIMEOUT_ERRORS:
            return Failure.TIMEOUT
        if number in mariadb.ROW_ERRORS:
            return Failure.ROW
        if number in mariadb.UNAVAILABLE_ERRORS:
            return Failure.UNAVAILABLE
    state = sqlstate_of(error)
    if state is not None:
        if state == _QUERY_CANCELED:
            return Failure.TIMEOUT
        if state[:2] in _ROW_CLASSES:
            return Failure.ROW
        if state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES:
            return Failure.UNAVAILABLE
        return Failure.OTHER
    # Without a SQLSTATE (SQLite, or psycopg refusing a value before sending it), the driver's
    # class says it. Values that cannot even be bound come out of the driver unwrapped:
    # OverflowError (an integer beyond 64 bits in sqlite3), UnicodeEncodeError (a lone
    # surrogate).
    if isinstance(error, exc.DataError | exc.IntegrityError | OverflowError | UnicodeEncodeError):
        return Failure.ROW
    if isinstance(
        error,
        exc.OperationalError | exc.InterfaceError | exc.TimeoutError | exc.DisconnectionError,
    ):
        return Failure.UNAVAILABLE
    return Failure.OTHER


def is_unavailable(error: BaseException) -> bool:
    """True if `error` says the database could not be reached or did not answer in time."""
    return classify(error) in (Failure.UNAVAILABLE, Failure.TIMEOUT)


def watch_availability(engine: Engine, note: Callable[[str | None], None]) -> None:
    """Calls `note(reason)` whenever `engine` cannot reach its database, and `note(None)` when it
    connects: every caller of the engine reports, so the reason is known wherever it arose."""

    @event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> None:
        if is_unavailable(context.sqlalchemy_exception):
            note(reason(context.original_exception))

    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_connection: Any, _record: Any) -> None:
        note(None)


def reason(error: BaseException) -> str:
    """A driver's error as one line: its type and text (which name no password)."""
    cause = getattr(error, "orig", None) or error
    text = " ".join(line.strip() for line in str(cause).strip().splitlines() if line.strip())
    return f"{type(cause).__name__}: {text[:REASON_MAX_CHARS]}"


@contextlib.contextmanager
def translated(url: str) -> Iterator[None]:
    """Turn SQLAlchemy's errors into storage errors at the boundary of the sink."""
    try:
        yield
    except exc.SQLAlchemyError as error:
        message = _first_line(error)
        state = sqlstate_of(error)
        failure = classify(error)
        if failure is Failure.TIMEOUT:
            raise StatementTimeout(
                f"database {redacted(url)} timed out: {message}", sqlstate=state
            ) from error
        if failure is Failure.UNAVAILABLE:
            raise DatabaseUnavailable(
                f"database {redacted(url)} unavailable: {message}", sqlstate=state
            ) from error
        raise DatabaseError(f"database {redacted(url)}: {message}", sqlstate=state) from error


def _first_line(error: exc.SQLAlchemyError) -> str:
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"
