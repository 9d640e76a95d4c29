"""The fence only rises: a trigger refuses an UPDATE that lowers an epoch or renames a domain.

The server's role needs UPDATE on `fence` to raise it, and with it could lower the fence (letting
a stale writer back in) or move a domain's row aside; the trigger, owned by the owner role, lets
no role do either. PostgreSQL and MariaDB (a trigger's SIGNAL; creating it needs the TRIGGER
privilege, and with binary logging on, SUPER or log_bin_trust_function_creators): SQLite has no
roles to keep apart.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = """
CREATE FUNCTION fence_only_rises() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.cluster IS DISTINCT FROM OLD.cluster OR NEW.epoch < OLD.epoch THEN
        RAISE EXCEPTION 'fence %: epoch % may not become % (%)',
            OLD.cluster, OLD.epoch, NEW.epoch, NEW.cluster
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$
"""

TRIGGER = (
    "CREATE TRIGGER fence_only_rises BEFORE UPDATE ON fence"
    " FOR EACH ROW EXECUTE FUNCTION fence_only_rises()"
)


# MariaDB: one statement, so no DELIMITER games; SQLSTATE 23000 as PostgreSQL's check_violation
# is in class 23, an integrity error.
MARIADB_TRIGGER = """
CREATE TRIGGER fence_only_rises BEFORE UPDATE ON fence FOR EACH ROW
BEGIN
    IF NOT (NEW.cluster <=> OLD.cluster) OR NEW.epoch < OLD.epoch THEN
        SIGNAL SQLSTATE '23000'
            SET MESSAGE_TEXT = 'fence: an epoch may not be lowered nor a domain renamed';
    END IF;
END
"""


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(FUNCTION)
        op.execute(TRIGGER)
    elif dialect in ("mysql", "mariadb"):
        op.execute(MARIADB_TRIGGER)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER fence_only_rises ON fence")
        op.execute("DROP FUNCTION fence_only_rises()")
    elif dialect in ("mysql", "mariadb"):
        op.execute("DROP TRIGGER fence_only_rises")
