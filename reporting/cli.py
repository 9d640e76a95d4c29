"""The `reporting-server` command: one sub-command per module of reporting.commands."""

import argparse
import importlib
import logging
import sys

from reporting.errors import ConfigError, ReportingError
from storage.errors import StorageError

# Each module defines register(subparsers), which adds its parser(s) with set_defaults(func=...).
COMMAND_MODULES = ("run", "status", "replay", "db", "produce", "verify", "stack", "journal", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reporting-server",
        description="Reporting Server HA: reports from ActiveMQ into SQL, exactly once.",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"reporting.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"reporting-server: config error: {exc}", file=sys.stderr)
        return 2
    except (ReportingError, StorageError) as exc:
        print(f"reporting-server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
