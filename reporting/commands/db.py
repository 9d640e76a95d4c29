"""`reporting-server db upgrade --config FILE`: create or migrate the database schema.
`reporting-server db grant --config FILE --role NAME`: give the server's role its privileges.
`reporting-server db grant --role NAME --print [--config FILE | --schema NAME]`: print the SQL."""

import argparse

from reporting.config import load_config
from reporting.errors import ConfigError
from storage.database import Sink
from storage.database.engine import redacted


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("db", help="database schema")
    actions = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade_parser = actions.add_parser("upgrade", help="create or migrate the schema (idempotent)")
    upgrade_parser.add_argument("--config", required=True, help="an instance's TOML file")
    upgrade_parser.set_defaults(func=upgrade)
    grant_parser = actions.add_parser(
        "grant", help="PostgreSQL: grant a role what the server needs, nothing more"
    )
    grant_parser.add_argument(
        "--config", help="a TOML file naming the owner role (with --print: only its schema)"
    )
    grant_parser.add_argument("--role", required=True, help="the role the server logs in as")
    grant_parser.add_argument(
        "--print", action="store_true", help="print the SQL, do not run it (needs no database)"
    )
    grant_parser.add_argument(
        "--schema", help="with --print: the schema (default: from the URL's search_path, or public)"
    )
    grant_parser.set_defaults(func=grant)


def upgrade(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    sink = Sink(
        config.database.url,
        cluster=config.fence_cluster,
        journal=config.journal_key,
        warn_unreachable=False,
    )
    try:
        sink.upgrade()
    finally:
        sink.close()
    print(f"database {redacted(config.database.url)}: schema is up to date")
    return 0


def grant(args: argparse.Namespace) -> int:
    from storage.database.engine import make_engine, translated
    from storage.database.grants import (
        DEFAULT_SCHEMA,
        grant_server_role,
        grant_statements,
        schema_of,
    )

    if args.print:
        schema = args.schema
        if schema is None and args.config is not None:
            schema = schema_of(load_config(args.config, secrets=False).database.url)
        print(";\n".join(grant_statements(args.role, schema or DEFAULT_SCHEMA)) + ";")
        return 0
    if args.schema is not None:
        raise ConfigError("--schema", "only with --print; the schema is the one of the URL")
    if args.config is None:
        raise ConfigError("--config", "required unless --print: the owner's TOML file")
    config = load_config(args.config)
    with translated(config.database.url):
        engine = make_engine(config.database.url)
        try:
            grant_server_role(engine, args.role)
        finally:
            engine.dispose()
    print(f"database {redacted(config.database.url)}: role {args.role} granted the server's rights")
    return 0
