"""A long chaos run against servers of its own: python -m tests.chaos.soak --minutes 30.

Starts ActiveMQ (two for a segregated pair), ZooKeeper and PostgreSQL from the harness under
--out, builds a pair on them, applies seeded random faults for the given time, then checks the
ledger and writes the timeline (timeline.json, timeline.png) and the summary (summary.txt) to
--out. Exits 1 if any guarantee failed. Run it from the repository root: tests/ is not an
installed package.
"""

import argparse
import logging
import random
import sys
import tempfile
from pathlib import Path

from reporting.harness import ActiveMQ, Postgres, Service, ZooKeeper
from tests.chaos.faults import faults_for
from tests.chaos.pair import chaos_pair
from tests.chaos.runner import ChaosRun


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long faults go on")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    parser.add_argument("--out", type=Path, default=None, help="default: a new temporary dir")
    parser.add_argument("--mode", choices=("shared", "segregated"), default="shared")
    parser.add_argument("--rate", type=float, default=150.0, help="reports per second")
    parser.add_argument(
        "--faults",
        default=None,
        help="comma-separated fault names (default: all of the mode: "
        + "; ".join(
            f"{m}: {','.join(f.name for f in faults_for(m))}" for m in ("shared", "segregated")
        )
        + ")",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    out = (args.out or Path(tempfile.mkdtemp(prefix=f"reporting-soak-{seed}-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    by_name = {f.name: f for f in faults_for(args.mode)}
    wanted = args.faults.split(",") if args.faults else list(by_name)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        print(
            f"faults {unknown} are not for a {args.mode} pair: {', '.join(by_name)}",
            file=sys.stderr,
        )
        return 2
    faults = [by_name[n] for n in wanted]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    # Reconnect attempts while a broker is down are expected; the client says when it fails over.
    logging.getLogger("stomp.py").setLevel(logging.CRITICAL)
    print(f"soak: seed {seed}, {args.mode}, {args.minutes:g} minutes, output in {out}", flush=True)

    servers: list[Service] = []
    try:
        harness = out / "harness"
        broker = ActiveMQ(harness / "activemq")
        zookeeper = ZooKeeper(harness / "zookeeper")
        postgres = Postgres(harness / "postgres")
        backup_broker = ActiveMQ(harness / "backup-activemq") if args.mode == "segregated" else None
        for server in (postgres, zookeeper, broker, backup_broker):
            if server is not None:
                print(f"soak: starting {server.name} in {server.workdir}", flush=True)
                servers.append(server)
                server.start()
        brokers = [broker] if backup_broker is None else [broker, backup_broker]
        pair = chaos_pair(
            out / "pair", mode=args.mode, brokers=brokers, zookeeper=zookeeper, database=postgres
        )
        with pair:
            result = ChaosRun(
                seed,
                pair=pair,
                workdir=out,
                faults=faults,
                duration_s=args.minutes * 60,
                rate_per_s=args.rate,
                plot=not args.no_plot,
                log=lambda line: print(line, flush=True),
            ).run()
    finally:
        for server in reversed(servers):
            server.stop()
    (out / "summary.txt").write_text(result.summary() + "\n")
    print(f"soak: {'ok' if result.ok else 'FAILED'}; timeline {result.timeline_png}", flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
