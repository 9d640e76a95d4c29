"""`reporting-server demo [--dir DIR] [--keep]`: a shared-storage pair on local servers at work.

Starts ActiveMQ and ZooKeeper from the harness, two instances sharing one journal directory and
one SQLite database, sends sample reports of every kind (and a few malformed ones), kills the
active instance with SIGKILL, sends more, and checks the ledger of receipted reports against the
database. Everything it starts is stopped at the end unless --keep is given.
"""

import argparse
import random
import time
from pathlib import Path

MALFORMED = (
    ("gvp.reporting.cdr", b"{not json", "demo-bad-json"),
    ("gvp.reporting.or", b'{"component": "mcp1"}', "demo-missing-fields"),
    ("gvp.reporting.sq", b"\xff\xfe", "demo-bad-utf8"),
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run a demo pair on local servers and show it working")
    parser.add_argument("--dir", default="demo", help="where the servers and instances live")
    parser.add_argument("--reports", type=int, default=400, help="reports to send in each round")
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument(
        "--containers",
        action="store_true",
        help="run the servers and the pair in containers of the project's images "
        "(scripts/demo --containers starts an engine and builds them first)",
    )
    parser.set_defaults(func=demo)


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _table(instances: list) -> None:
    from reporting.commands.status import print_table

    rows = []
    for instance in instances:
        row = instance.try_status() or {"name": instance.name, "role": "unreachable"}
        rows.append({**row, "http": instance.listen})
    print_table(rows)


def _wait(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


def demo(args: argparse.Namespace) -> int:
    from reporting.harness import ActiveMQ, ZooKeeper
    from reporting.harness.instance import Instance
    from reporting.samples import sample_report
    from reporting.wire.producer import ReportClient
    from storage.database import Sink
    from storage.reports import KINDS

    if args.containers:
        # The project's images (scripts/containers up), each server in a container on the
        # host's network; killed with `docker kill`.
        from testcontainers.core.config import testcontainers_config

        from reporting.harness import containers

        testcontainers_config.ryuk_disabled = True  # its image cannot be pulled here
        ActiveMQ = containers.ActiveMQContainer  # noqa: N806
        ZooKeeper = containers.ZooKeeperContainer  # noqa: N806
        Instance = containers.InstanceContainer  # noqa: N806
    where = "in containers" if args.containers else "as local processes"
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    _say(f"starting ActiveMQ and ZooKeeper under {root}, {where}")
    broker = ActiveMQ(root / "activemq")
    zookeeper = ZooKeeper(root / "zookeeper")
    broker.start()
    zookeeper.start()
    print(f"   ActiveMQ STOMP {broker.host}, ZooKeeper {zookeeper.hosts}")

    db_url = f"sqlite:///{root / 'reporting.db'}"
    common = {
        "ha": {"mode": "shared", "zookeeper": zookeeper.hosts, "cluster": "/gvp/reporting/demo"},
        "broker": {"hosts": [broker.host]},
        "database": {"url": db_url},
        "journal": {"dir": str(root / "journal")},
    }
    a = Instance(root / "rs-a", {"name": "rs-a", **common})
    b = Instance(root / "rs-b", {"name": "rs-b", **common})
    a.config["ha"]["peers"] = [b.listen]
    b.config["ha"]["peers"] = [a.listen]
    pair = [a, b]
    _say("starting the pair rs-a and rs-b (shared storage)")
    for instance in pair:
        instance.start()
    active = _wait(lambda: _active(pair), 30, "an active instance")
    _table(pair)

    ledger = root / "ledger.txt"
    ledger.unlink(missing_ok=True)
    rng = random.Random(1121)
    client = ReportClient([broker.host], ledger=ledger)
    try:
        _say(f"sending {args.reports} reports of every kind, with receipts, and 3 malformed ones")
        for i in range(args.reports):
            kind = KINDS[i % len(KINDS)]
            client.send(kind, sample_report(kind, rng))
        client.flush()
        for queue, body, report_id in MALFORMED:
            client.send_raw(f"/queue/{queue}", body, report_id=report_id, ledger=False)
        client.flush()

        sink = Sink(db_url, cluster="demo-verify", journal="demo-verify")
        ids = _ledger_ids(ledger)
        _wait(lambda: _stored(sink, ids) == len(ids), 60, "the reports to be stored")
        print(
            f"   stored {_stored(sink, ids)} of {len(ids)} receipted reports, "
            f"{sink.count_rejected()} rejected"
        )

        _say(f"kill -9 of the active instance {active.name}")
        killed_at = time.monotonic()
        active.kill()
        survivor = _wait(lambda: _active([i for i in pair if i is not active]), 60, "failover")
        print(f"   {survivor.name} is active after {time.monotonic() - killed_at:.1f} s")

        _say(f"sending {args.reports} more reports")
        for i in range(args.reports):
            kind = KINDS[i % len(KINDS)]
            client.send(kind, sample_report(kind, rng))
        client.flush()
        _say(f"restarting {active.name}; it comes back as standby")
        active.start()
        ids = _ledger_ids(ledger)
        _wait(lambda: _stored(sink, ids) == len(ids), 60, "the reports to be stored")
        _table(pair)
        counts = sink.report_id_counts(ids)
        missing = sum(1 for n in counts.values() if n == 0) + len(ids) - len(counts)
        doubled = sum(1 for n in counts.values() if n > 1)
        _say(
            f"ledger check: sent {len(ids)}, stored {len(ids) - missing}, missing {missing}, "
            f"duplicated {doubled}"
        )
        sink.close()
    finally:
        client.close()
        if args.keep:
            for service in (*pair, broker, zookeeper):
                service.detach()
            print(f"\nleft running; status: reporting-server status --config {a.config_path}")
        else:
            for service in (*pair, broker, zookeeper):
                service.stop()
    return 0 if missing == 0 and doubled == 0 else 1


def _active(instances: list):
    for instance in instances:
        status = instance.try_status()
        if status and status.get("role") == "active":
            return instance
    return None


def _ledger_ids(path: Path) -> set[str]:
    return {line for line in path.read_text().splitlines() if line}


def _stored(sink, ids: set[str]) -> int:
    return sum(1 for n in sink.report_id_counts(ids).values() if n >= 1)
