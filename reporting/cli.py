"""The `reporting-server` command: one sub-command per module of reporting.commands."""

import argparse
import importlib
import sys

from reporting import logs
from reporting.errors import ConfigError, ReportingError
from storage.errors import StorageError

# Each module defines register(subparsers), which adds its parser(s) with set_defaults(func=...).
COMMAND_MODULES = (
    "run",
    "check_config",
    "status",
    "replay",
    "db",
    "produce",
    "verify",
    "stack",
    "journal",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reporting-server",
        description="Reporting Server HA: reports from ActiveMQ into SQL, exactly once.",
    )
    _add_log_level(parser, default="INFO")
    _add_log_format(parser, default="text")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"reporting.commands.{name}").register(sub)
    # Accepted after the sub-command too (`run --config F --log-level DEBUG`), as operators type it.
    for command in _subcommands(parser):
        _add_log_level(command, default=argparse.SUPPRESS)
        _add_log_format(command, default=argparse.SUPPRESS)
    return parser


def _add_log_level(parser: argparse.ArgumentParser, *, default: str) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.upper,
        choices=logs.LEVELS,
        help=", ".join(logs.LEVELS),
    )


def _add_log_format(parser: argparse.ArgumentParser, *, default: str) -> None:
    parser.add_argument(
        "--log-format",
        default=default,
        choices=logs.FORMATS,
        help="text (the default), or json: one object a line, for a log shipper",
    )


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every sub-command's parser, nested ones (`db upgrade`) included."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += [child, *_subcommands(child)]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"reporting-server: config error: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except (ReportingError, StorageError) as exc:
        # Error lines are held to the same rule as log lines.
        print(f"reporting-server: {logs.redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
