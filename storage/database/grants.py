"""Least privilege on PostgreSQL: what the server's own role may do with the schema.

The owner role runs `db upgrade` (DDL) and grants; the server runs as a role that may only add
and read reports, and keep its journal positions and fence rows. It can neither drop, truncate,
update nor delete reports.
"""

import re

from sqlalchemy import Engine, text

from storage.database.schema import fence, journal_positions, rejected_reports, reports
from storage.errors import DatabaseError

_ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# Table -> privileges of the server's role.
SERVER_PRIVILEGES = {
    reports.name: "SELECT, INSERT",
    rejected_reports.name: "SELECT, INSERT",
    journal_positions.name: "SELECT, INSERT, UPDATE, DELETE",
    fence.name: "SELECT, INSERT, UPDATE",
    # `run` checks that the schema is at the newest revision before draining.
    "alembic_version": "SELECT",
}


def grant_statements(role: str, schema: str) -> list[str]:
    """The statements that give `role` exactly the server's privileges (and revoke the rest)."""
    if not _ROLE.match(role):
        raise DatabaseError(f"not a plain role name: {role!r}")
    ident = f'"{role}"'
    tables = ", ".join(f'"{schema}"."{name}"' for name in SERVER_PRIVILEGES)
    statements = [
        f'GRANT USAGE ON SCHEMA "{schema}" TO {ident}',
        f"REVOKE ALL ON {tables} FROM {ident}",
    ]
    statements += [
        f'GRANT {privileges} ON "{schema}"."{name}" TO {ident}'
        for name, privileges in SERVER_PRIVILEGES.items()
    ]
    # Row ids of reports and rejected_reports come from their sequences.
    statements.append(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{schema}" TO {ident}')
    return statements


def grant_server_role(engine: Engine, role: str) -> list[str]:
    """Grants `role` the server's privileges on the schema of `engine` (run as its owner);
    returns the statements run."""
    if engine.dialect.name != "postgresql":
        raise DatabaseError("grants are for PostgreSQL; SQLite has no roles")
    with engine.begin() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        if not _ROLE.match(schema):
            raise DatabaseError(f"not a plain schema name: {schema!r}")
        statements = grant_statements(role, schema)
        for statement in statements:
            conn.execute(text(statement))
    return statements
