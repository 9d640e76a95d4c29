"""`reporting-server stack up|down|status --dir DIR`: local servers for trying out a pair."""

import argparse
import json
import os

from reporting.harness import Stack
from reporting.harness.containers import select_backend


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "stack",
        help="start/stop local ActiveMQ, ZooKeeper and PostgreSQL for a demo pair",
        description="Start, inspect or stop the servers a demo pair needs, under DIR.",
    )
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--dir", required=True, help="directory for the servers' data and logs")
    parser.add_argument(
        "--backend",
        choices=("local", "containers"),
        default=None,
        help="local processes or Docker containers (default: $REPORTING_TEST_BACKEND, "
        "else containers when Docker answers, else local)",
    )
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    backend = (
        args.backend
        or _saved_backend(args.dir)
        or select_backend(os.environ.get("REPORTING_TEST_BACKEND"))
    )
    if backend == "containers" and args.action == "up":
        from testcontainers.core.config import testcontainers_config

        # The reaper would remove the containers as soon as this command exits.
        testcontainers_config.ryuk_disabled = True
    stack = Stack(args.dir, backend=backend)
    if args.action == "up":
        stack.start_all()
        stack.detach()
    elif args.action == "down":
        stack.stop_all()
    status = stack.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    for name, service in status["services"].items():
        state = f"running, pid {service['pid']}" if service["running"] else "stopped"
        print(f"{name:10} {state}; log {service['log']}")
    if args.action != "down":
        for name, endpoint in status["endpoints"].items():
            print(f"{name:10} {endpoint}")
    return 0


def _saved_backend(dir: str) -> str | None:
    try:
        with open(os.path.join(dir, "stack.json")) as state:
            return json.load(state).get("backend")
    except (OSError, ValueError):
        return None
