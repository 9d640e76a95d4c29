"""Keys compare exactly on MariaDB: report ids, digests, journal and segment names, fence domains.

MariaDB's default utf8mb4 collations ignore case, accents and trailing spaces, so the unique key
of `reports` took "ABC", "abc" and "abc " for one report id: the second to arrive was skipped as
stored, and a report was lost. These columns get `utf8mb4_nopad_bin`, byte for byte and without
padding, as they compare on PostgreSQL and SQLite (where this changes nothing). MariaDB rebuilds
the tables to do it: on a large `reports` table the upgrade takes a while.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> (column, characters), spelled out: a migration is a fixed step in history.
KEYS = {
    "reports": (("report_id", 512),),
    "rejected_reports": (("report_id", 512), ("digest", 64)),
    "journal_positions": (("journal", 255), ("segment", 255)),
    "fence": (("cluster", 512),),
}


def _modify(collation: str) -> None:
    for table, columns in KEYS.items():
        changes = ", ".join(
            f"MODIFY {column} VARCHAR({chars}) CHARACTER SET utf8mb4 COLLATE {collation} NOT NULL"
            for column, chars in columns
        )
        op.execute(f"ALTER TABLE {table} {changes}")


def upgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        _modify("utf8mb4_nopad_bin")


def downgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        _modify("utf8mb4_unicode_ci")
