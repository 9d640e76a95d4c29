"""`reporting-server status --config FILE [--json]`: role and health of the pair."""

import argparse
import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from reporting.config import Config, load_config
from storage.reports import kind_of


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("status", help="role and health of the pair")
    parser.add_argument("--config", required=True, help="an instance's TOML file")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=status)


def fetch_status(listen: str, timeout_s: float = 2.0) -> dict[str, Any]:
    """One instance's /status, or a stand-in saying why it could not be read."""
    try:
        with urllib.request.urlopen(f"http://{listen}/status", timeout=timeout_s) as reply:
            return json.load(reply)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        return {"name": "?", "http": listen, "role": "unreachable", "error": str(reason)}


def _kinds(queues: list[str]) -> str:
    return ",".join(sorted(kind_of(queue) for queue in queues))


COLUMNS = (
    ("name", lambda s: s.get("name")),
    ("mode", lambda s: s.get("mode")),
    ("role", lambda s: s.get("role")),
    ("epoch", lambda s: s.get("epoch")),
    ("holder", lambda s: s.get("holder")),
    # Group mode: the kinds of the queues the instance owns.
    ("queues", lambda s: None if "owned" not in s else _kinds(s["owned"]) or "none"),
    ("broker", lambda s: s.get("broker")),
    ("database", lambda s: s.get("database")),
    ("pending", lambda s: (s.get("journal") or {}).get("pending")),
    ("stored", lambda s: s.get("stored")),
    ("http", lambda s: s.get("http")),
)


def print_table(rows: list[dict[str, Any]]) -> None:
    """The instances side by side, one line each."""
    table = [[name for name, _ in COLUMNS]]
    table += [["-" if get(r) is None else str(get(r)) for _, get in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())


def status(args: argparse.Namespace) -> int:
    # Only HTTP is spoken here: the hops' passwords need not be at hand where status is run.
    config = load_config(args.config, secrets=False)
    addresses = [str(a) for a in (config.http.listen, *config.ha.peers)]
    rows = []
    for address in addresses:
        row = fetch_status(address)
        row["http"] = address
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
        for row in rows:
            if row.get("election_error"):
                print(f"{row.get('name')}: cannot take part: {row['election_error']}")
            if row.get("database_error"):
                print(f"{row.get('name')}: database down: {row['database_error']}")
    return 0 if healthy(config, rows) else 1


def healthy(config: Config, rows: list[dict[str, Any]]) -> bool:
    """Every instance answers, can take part in the election and reaches its database, and the
    role is held once: the pair's, or each queue's in a group."""
    if any(r.get("role") == "unreachable" for r in rows):
        return False
    # Standing by for ever (wrong ZooKeeper credentials): nobody takes over when the active dies.
    if any(r.get("election_error") for r in rows):
        return False
    # Buffering, with the reason the database gave (a refused password, a wrong CA, an outage):
    # nothing reaches the database until it is fixed or back.
    if any(r.get("database_error") for r in rows):
        return False
    if config.ha.mode == "group":
        owned = [queue for r in rows for queue in r.get("owned", [])]
        return sorted(owned) == sorted(config.broker.queues)
    return sum(1 for r in rows if r.get("role") == "active") == 1
