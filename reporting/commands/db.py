"""`reporting-server db upgrade --config FILE`: create or migrate the database schema.
`reporting-server db grant --config FILE --role NAME`: give the server's role its privileges."""

import argparse

from reporting.config import load_config
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
    grant_parser.add_argument("--config", required=True, help="a TOML file naming the owner role")
    grant_parser.add_argument("--role", required=True, help="the role the server logs in as")
    grant_parser.add_argument("--print", action="store_true", help="print the SQL, do not run it")
    grant_parser.set_defaults(func=grant)


def upgrade(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    sink = Sink(config.database.url, cluster=config.fence_cluster, journal=config.journal_key)
    try:
        sink.upgrade()
    finally:
        sink.close()
    print(f"database {redacted(config.database.url)}: schema is up to date")
    return 0


def grant(args: argparse.Namespace) -> int:
    from storage.database.engine import make_engine, translated
    from storage.database.grants import grant_server_role, grant_statements

    if args.print:
        print(";\n".join(grant_statements(args.role, "public")) + ";")
        return 0
    config = load_config(args.config)
    with translated(config.database.url):
        engine = make_engine(config.database.url)
        try:
            grant_server_role(engine, args.role)
        finally:
            engine.dispose()
    print(f"database {redacted(config.database.url)}: role {args.role} granted the server's rights")
    return 0
