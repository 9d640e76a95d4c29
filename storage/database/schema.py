"""The database schema as SQLAlchemy Core tables.

Migrations 0001 and 0003 (MariaDB's exact keys) create exactly these; a unit test compares the
two, so a change here needs a new migration. Times are stored in UTC.

On MariaDB (and MySQL) the types differ where its defaults would lose data or break an index:
an indexed text column is a VARCHAR whose utf8mb4 key fits InnoDB's 3072-byte limit (a TEXT
column can be indexed only by prefix or hash), times keep microseconds, a float is a DOUBLE, the
raw bytes a LONGBLOB (a BLOB holds 64 KiB), and `JSON` is MariaDB's LONGTEXT with a json_valid
check.
"""

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.mysql import DATETIME, DOUBLE, LONGBLOB, VARCHAR
from sqlalchemy.dialects.postgresql import BYTEA, JSONB

metadata = MetaData()

_MYSQL = ("mysql", "mariadb")
# SQLite only autoincrements an INTEGER PRIMARY KEY (which is 64-bit there anyway).
RowId = BigInteger().with_variant(Integer(), "sqlite")
Payload = JSON().with_variant(JSONB(), "postgresql")
Raw = LargeBinary().with_variant(BYTEA(), "postgresql").with_variant(LONGBLOB(), *_MYSQL)
Time = DateTime(timezone=True).with_variant(DATETIME(fsp=6), *_MYSQL)
Double = Float().with_variant(DOUBLE(asdecimal=False), *_MYSQL)


# Byte for byte and without padding, as text compares on PostgreSQL and SQLite: MariaDB's default
# collations take "ABC", "abc" and "abc " for one value (migration 0003).
EXACT = "utf8mb4_nopad_bin"


def Key(chars: int, *, exact: bool = False) -> Text:  # noqa: N802 - a type, as the others here
    """Text that is part of an index: VARCHAR(chars) on MariaDB (4 bytes a character in
    utf8mb4, so an index of them stays within 3072 bytes), TEXT elsewhere. `exact`: a key that
    tells values apart byte for byte on MariaDB too (an id, a name)."""
    return Text().with_variant(VARCHAR(chars, collation=EXACT if exact else None), *_MYSQL)


# Longer than any id or name the server writes (decode bounds report ids to 200 characters,
# typed text copies to MAX_TEXT_CHARS = 512): a longer one is refused as the row's fault.
ID_CHARS = 512
NAME_CHARS = 255

reports = Table(
    "reports",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("report_id", Key(ID_CHARS, exact=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("queue", Text, nullable=False),
    Column("payload", Payload, nullable=False),
    Column("received_at", Time, nullable=False),
    Column("stored_at", Time, nullable=False, server_default=func.now()),
    # Typed copies of payload fields, for indexes and sums; NULL where the kind has no such field
    # or its value does not parse.
    Column("call_id", Key(ID_CHARS)),
    Column("component", Key(ID_CHARS)),
    Column("tenant", Key(ID_CHARS)),
    Column("started_at", Time),  # cdr `start`, events `at`
    Column("ended_at", Time),  # cdr `end`
    Column("interval_start", Time),  # or `interval_start`
    Column("arrivals", BigInteger),  # or
    Column("peak", BigInteger),  # or
    Column("metric", Text),  # sq
    Column("value", Double),  # sq
    UniqueConstraint("report_id", name="reports_report_id_key"),
    Index("ix_reports_call_id", "call_id"),
    Index("ix_reports_component_started_at", "component", "started_at"),
    Index("ix_reports_tenant_started_at", "tenant", "started_at"),
    Index("ix_reports_interval_start", "interval_start"),
    Index("ix_reports_received_at", "received_at"),
)

rejected_reports = Table(
    "rejected_reports",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    # The message id where the report had none.
    Column("report_id", Key(ID_CHARS, exact=True), nullable=False),
    Column("queue", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("raw", Raw, nullable=False),
    Column("received_at", Time, nullable=False),
    Column("stored_at", Time, nullable=False, server_default=func.now()),
    # sha256 of (report_id, queue, reason, raw); for a report the database refused, of a fixed
    # reason and its payload text instead of the record (which holds when it came): a rejected
    # record drained again, in any process, or a refused report received again, is stored once.
    Column("digest", Key(64, exact=True), nullable=False),
    UniqueConstraint("digest", name="rejected_reports_digest_key"),
    Index("ix_rejected_reports_report_id", "report_id"),
)

# The journal position each drainer (keyed by `journal`) has stored, per segment.
journal_positions = Table(
    "journal_positions",
    metadata,
    Column("journal", Key(NAME_CHARS, exact=True), nullable=False),
    Column("segment", Key(NAME_CHARS, exact=True), nullable=False),
    Column("byte", BigInteger, nullable=False),
    PrimaryKeyConstraint("journal", "segment"),
)

# The newest epoch that has written for a fencing domain; older epochs may not write.
fence = Table(
    "fence",
    metadata,
    Column("cluster", Key(ID_CHARS, exact=True), primary_key=True),
    Column("epoch", BigInteger, nullable=False),
)
