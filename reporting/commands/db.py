"""`reporting-server db upgrade --config FILE`: create or migrate the database schema."""

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


def upgrade(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    sink = Sink(config.database.url, cluster=config.fence_cluster, journal=config.journal_key)
    try:
        sink.upgrade()
    finally:
        sink.close()
    print(f"database {redacted(config.database.url)}: schema is up to date")
    return 0
