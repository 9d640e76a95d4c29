"""Least privilege on PostgreSQL: what the server's own role may do with the schema.

The owner role runs `db upgrade` (DDL) and grants; the server runs as a role that may only add
and read reports, and add and move its journal positions and fence rows. It can neither drop,
truncate, update nor delete reports, nor delete positions, nor lower the fence (migration 0002's
trigger), nor create objects.
"""

import re
from urllib.parse import unquote

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from storage.database.schema import fence, journal_positions, rejected_reports, reports
from storage.errors import DatabaseError

_ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# Table -> privileges of the server's role.
SERVER_PRIVILEGES = {
    reports.name: "SELECT, INSERT",
    rejected_reports.name: "SELECT, INSERT",
    # Rows of released segments are kept (one per segment): no DELETE.
    journal_positions.name: "SELECT, INSERT, UPDATE",
    fence.name: "SELECT, INSERT, UPDATE",
    # `run` checks that the schema is at the newest revision before draining.
    "alembic_version": "SELECT",
}
DEFAULT_SCHEMA = "public"
_SEARCH_PATH = re.compile(r"(?:^|\s)(?:-c\s*|--)search_path=([^\s]+)")


def grant_statements(role: str, schema: str) -> list[str]:
    """The statements that give `role` exactly the server's privileges (and revoke the rest)."""
    if not _ROLE.match(role):
        raise DatabaseError(f"not a plain role name: {role!r}")
    if not _ROLE.match(schema):
        raise DatabaseError(f"not a plain schema name: {schema!r}")
    ident = f'"{role}"'
    tables = ", ".join(f'"{schema}"."{name}"' for name in SERVER_PRIVILEGES)
    statements = [
        # PostgreSQL before 15 lets every role create in the public schema.
        f'REVOKE CREATE ON SCHEMA "{schema}" FROM PUBLIC',
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
        statements = grant_statements(role, schema)
        for statement in statements:
            conn.execute(text(statement))
        # A REVOKE by a role that does not own the schema only warns; say so instead.
        open_to_all = "SELECT has_schema_privilege('public', :schema, 'CREATE')"
        if conn.execute(text(open_to_all), {"schema": schema}).scalar_one():
            raise DatabaseError(
                f"every role may still create objects in schema {schema}; as its owner run:"
                f' REVOKE CREATE ON SCHEMA "{schema}" FROM PUBLIC'
            )
    return statements


def schema_of(url: str) -> str:
    """The schema a connection to `url` works in: the first of a search_path set in its libpq
    `options` (`?options=-csearch_path%3Dreporting`), else public."""
    options = make_url(url).query.get("options", "")
    for option in (options,) if isinstance(options, str) else options:
        found = _SEARCH_PATH.search(unquote(option))
        if found:
            return found.group(1).split(",")[0].strip('"')
    return DEFAULT_SCHEMA
