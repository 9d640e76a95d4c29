"""Initial schema: reports, rejected_reports, journal_positions, fence.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from schema.py: a migration is a fixed step in history.
# The MariaDB variants came with MariaDB support, before any MariaDB database existed: they
# change nothing on PostgreSQL or SQLite.
MYSQL = ("mysql", "mariadb")
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PAYLOAD = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
RAW = sa.LargeBinary().with_variant(postgresql.BYTEA(), "postgresql")
RAW = RAW.with_variant(mysql.LONGBLOB(), *MYSQL)
TS = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *MYSQL)
DOUBLE = sa.Float().with_variant(mysql.DOUBLE(), *MYSQL)


def key(chars: int) -> sa.Text:
    return sa.Text().with_variant(mysql.VARCHAR(chars), *MYSQL)


ID = key(512)
NAME = key(255)


def upgrade() -> None:
    op.create_table(
        "reports",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("report_id", ID, nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("payload", PAYLOAD, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("stored_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("call_id", ID),
        sa.Column("component", ID),
        sa.Column("tenant", ID),
        sa.Column("started_at", TS),
        sa.Column("ended_at", TS),
        sa.Column("interval_start", TS),
        sa.Column("arrivals", sa.BigInteger()),
        sa.Column("peak", sa.BigInteger()),
        sa.Column("metric", sa.Text()),
        sa.Column("value", DOUBLE),
        sa.UniqueConstraint("report_id", name="reports_report_id_key"),
    )
    op.create_index("ix_reports_call_id", "reports", ["call_id"])
    op.create_index("ix_reports_component_started_at", "reports", ["component", "started_at"])
    op.create_index("ix_reports_tenant_started_at", "reports", ["tenant", "started_at"])
    op.create_index("ix_reports_interval_start", "reports", ["interval_start"])
    op.create_index("ix_reports_received_at", "reports", ["received_at"])

    op.create_table(
        "rejected_reports",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("report_id", ID, nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw", RAW, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("stored_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("digest", key(64), nullable=False),
        sa.UniqueConstraint("digest", name="rejected_reports_digest_key"),
    )
    op.create_index("ix_rejected_reports_report_id", "rejected_reports", ["report_id"])

    op.create_table(
        "journal_positions",
        sa.Column("journal", NAME, nullable=False),
        sa.Column("segment", NAME, nullable=False),
        sa.Column("byte", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("journal", "segment"),
    )
    op.create_table(
        "fence",
        sa.Column("cluster", ID, primary_key=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fence")
    op.drop_table("journal_positions")
    op.drop_table("rejected_reports")
    op.drop_table("reports")
