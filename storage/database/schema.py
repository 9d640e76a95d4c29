"""The database schema as SQLAlchemy Core tables.

Migration 0001 creates exactly these; a unit test compares the two, so a change here needs a new
migration. Times are stored in UTC.
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
from sqlalchemy.dialects.postgresql import BYTEA, JSONB

metadata = MetaData()

# SQLite only autoincrements an INTEGER PRIMARY KEY (which is 64-bit there anyway).
RowId = BigInteger().with_variant(Integer(), "sqlite")
Payload = JSON().with_variant(JSONB(), "postgresql")
Raw = LargeBinary().with_variant(BYTEA(), "postgresql")

reports = Table(
    "reports",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("report_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("queue", Text, nullable=False),
    Column("payload", Payload, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Typed copies of payload fields, for indexes and sums; NULL where the kind has no such field
    # or its value does not parse.
    Column("call_id", Text),
    Column("component", Text),
    Column("tenant", Text),
    Column("started_at", DateTime(timezone=True)),  # cdr `start`, events `at`
    Column("ended_at", DateTime(timezone=True)),  # cdr `end`
    Column("interval_start", DateTime(timezone=True)),  # or `interval_start`
    Column("arrivals", BigInteger),  # or
    Column("peak", BigInteger),  # or
    Column("metric", Text),  # sq
    Column("value", Float),  # sq
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
    Column("report_id", Text, nullable=False),  # or the message id where the report had none
    Column("queue", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("raw", Raw, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # sha256 of (report_id, queue, reason, raw), of a fixed reason for a report the database
    # refused: a rejected record drained again, in any process, is stored once.
    Column("digest", Text, nullable=False),
    UniqueConstraint("digest", name="rejected_reports_digest_key"),
    Index("ix_rejected_reports_report_id", "report_id"),
)

# The journal position each drainer (keyed by `journal`) has stored, per segment.
journal_positions = Table(
    "journal_positions",
    metadata,
    Column("journal", Text, nullable=False),
    Column("segment", Text, nullable=False),
    Column("byte", BigInteger, nullable=False),
    PrimaryKeyConstraint("journal", "segment"),
)

# The newest epoch that has written for a fencing domain; older epochs may not write.
fence = Table(
    "fence",
    metadata,
    Column("cluster", Text, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
)
