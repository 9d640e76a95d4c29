"""`reporting-server produce`: send sample reports with receipts, failing over between brokers.

Every report the broker confirms goes into the ledger (`--ledger`), which `verify` checks against
the database. `--malformed N` mixes in hand-picked bad messages; the ids of those the server must
record as rejected go to `<ledger>.rejected`, not into the ledger.
"""

import argparse
import json
import logging
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from reporting.config import HostPort
from reporting.errors import ConfigError
from reporting.ledger import Ledger
from reporting.logs import remember_secret
from reporting.samples import sample_report
from reporting.wire.producer import ReportClient, queues_by_kind
from storage.reports import DEFAULT_QUEUES, KINDS, QUEUE_PREFIX

DEFAULT_MAX_BODY_BYTES = 1 << 20
PROGRESS_EVERY_S = 1.0


@dataclass(frozen=True)
class Malformed:
    name: str
    destination: str
    body: bytes
    # False for a message the server never sees: it sits in a queue nobody consumes.
    reaches_server: bool = True


def malformed_messages(
    max_body_bytes: int, queues: dict[str, str] | None = None
) -> list[Malformed]:
    """The hand-picked bad messages, one of each kind of mistake, in the order they are sent."""
    queues = queues or queues_by_kind(DEFAULT_QUEUES)
    cdr = sample_report("cdr", random.Random(0))
    missing = {k: v for k, v in cdr.items() if k != "end"}
    oversized = dict(cdr, padding="x" * max_body_bytes)
    # A queue of the same family that no server consumes.
    unknown = queues.get("cdr", next(iter(queues.values()))).rpartition(".")[0] + ".unknown"

    def dest(kind: str) -> str:
        return f"/queue/{queues.get(kind) or next(iter(queues.values()))}"

    return [
        Malformed("not-json", dest("cdr"), b"this is not JSON"),
        Malformed("bad-utf8", dest("events"), b'{"call_id": "\xff\xfe"}'),
        Malformed("missing-field", dest("cdr"), json.dumps(missing).encode()),
        Malformed("oversized", dest("cdr"), json.dumps(oversized).encode()),
        Malformed(
            "wrong-type",
            dest("or"),
            b'{"component": "rm", "interval_start": '
            b'"2024-01-01T00:00:00", "arrivals": -1, "peak": "many"}',
        ),
        Malformed("not-an-object", dest("sq"), b"[1, 2, 3]"),
        Malformed(
            "not-a-number",
            dest("sq"),
            b'{"call_id": "c", "component": "m", "metric": "mos", "value": NaN}',
        ),
        Malformed("unknown-queue", f"/queue/{unknown}", b"{}", reaches_server=False),
    ]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "produce", help="send sample reports with receipts; write confirmed ids to a ledger"
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="an instance's TOML file: its broker hosts and queues")
    where.add_argument(
        "--broker",
        action="append",
        metavar="HOST:PORT",
        help="a STOMP broker; repeat (or separate with commas) for failover, primary first",
    )
    parser.add_argument("--user", help="broker login (with --broker)")
    parser.add_argument(
        "--queue-prefix",
        default="",
        help="with --broker: send to <prefix>gvp.reporting.<kind> (a site's queues)",
    )
    parser.add_argument(
        "--password-env", metavar="NAME", help="environment variable holding the broker password"
    )
    parser.add_argument("--count", type=int, default=1000, help="reports to send (default 1000)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="reports per second (default 0: as fast as it can)"
    )
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"comma-separated, of {','.join(KINDS)}"
    )
    parser.add_argument("--ledger", type=Path, help="append confirmed report ids to this file")
    parser.add_argument("--seed", type=int, help="seed for the report contents (printed)")
    parser.add_argument(
        "--id-prefix", default="", help="put in front of every report-id, to tag a run"
    )
    parser.add_argument(
        "--malformed", type=int, default=0, help="also send N hand-picked bad messages"
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        help=f"the server's limit, for the oversized message (default: config, or {1 << 20})",
    )
    parser.add_argument(
        "--in-flight", type=int, default=100, help="unconfirmed reports allowed (default 100)"
    )
    parser.add_argument("--receipt-timeout", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument(
        "--reconnect-timeout",
        type=float,
        default=60.0,
        help="give up when no broker answers for this many seconds (default 60)",
    )
    parser.add_argument(
        "--failback",
        type=float,
        default=10.0,
        help="seconds on a backup broker before trying the first again (default 10)",
    )
    parser.set_defaults(func=produce)


@dataclass(frozen=True)
class _Target:
    hosts: list[str | HostPort]
    user: str | None
    password: str | None
    queues: dict[str, str]  # kind -> queue name, for the kinds to send
    max_body_bytes: int


def _target(args: argparse.Namespace) -> _Target:
    """Where and what to send, from --config or from the flags."""
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in kinds:
        if kind not in KINDS:
            raise ConfigError("--kinds", f"unknown kind {kind!r}; expected {', '.join(KINDS)}")
    if not kinds:
        raise ConfigError("--kinds", "no kinds given")
    if args.config:
        from reporting.config import load_config

        broker = load_config(args.config).broker
        configured = queues_by_kind(broker.queues)
        missing = [k for k in kinds if k not in configured]
        if missing and args.kinds != ",".join(KINDS):
            raise ConfigError("--kinds", f"not in broker.queues of the config: {missing}")
        return _Target(
            list(broker.hosts),
            broker.user,
            broker.password,
            {k: configured[k] for k in kinds if k in configured},
            args.max_body_bytes or broker.max_body_bytes,
        )
    hosts = [h.strip() for item in args.broker for h in item.split(",") if h.strip()]
    password = None
    if args.password_env:
        if args.password_env not in os.environ:
            raise ConfigError("--password-env", f"environment variable {args.password_env} unset")
        password = os.environ[args.password_env]
        remember_secret(password)
    queues = {k: f"{args.queue_prefix}{QUEUE_PREFIX}{k}" for k in kinds}
    return _Target(
        hosts, args.user, password, queues, args.max_body_bytes or DEFAULT_MAX_BODY_BYTES
    )


def _malformed_slots(count: int, malformed: int) -> dict[int, int]:
    """Report index -> malformed message number: the bad ones spread among the good."""
    return {(j + 1) * count // (malformed + 1): j for j in range(malformed)}


def produce(args: argparse.Namespace) -> int:
    if args.count < 0 or args.malformed < 0 or args.rate < 0:
        raise ConfigError("--count", "--count, --malformed and --rate must be >= 0")
    target = _target(args)
    kinds = list(target.queues)
    # The client logs each failover in one line; stomp.py's own retries and tracebacks are noise.
    stomp_log = logging.getLogger("stomp.py")
    if not stomp_log.isEnabledFor(logging.DEBUG):
        stomp_log.setLevel(logging.CRITICAL)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    rng = random.Random(seed)
    print(
        f"produce: seed {seed}, {args.count} reports of {','.join(kinds)} to {target.hosts[0]}",
        file=sys.stderr,
    )
    bad = malformed_messages(target.max_body_bytes, target.queues)
    slots = _malformed_slots(args.count, args.malformed)
    sent_kinds: Counter[str] = Counter()
    bad_sent: list[tuple[str, Malformed]] = []
    started = last_progress = time.monotonic()
    client = ReportClient(
        target.hosts,
        user=target.user,
        password=target.password,
        queues=target.queues.values(),
        ledger=args.ledger,
        in_flight=args.in_flight,
        receipt_timeout_s=args.receipt_timeout,
        reconnect_timeout_s=args.reconnect_timeout,
        failback_s=args.failback,
    )
    with client:
        for index in range(args.count + 1):
            if index in slots:
                message = bad[slots[index] % len(bad)]
                report_id = f"{args.id_prefix}malformed-{message.name}-{uuid.uuid4().hex[:12]}"
                client.send_raw(
                    message.destination, message.body, report_id=report_id, ledger=False
                )
                bad_sent.append((report_id, message))
            if index == args.count:
                break
            if args.rate > 0:
                # Pacing to the requested rate, not waiting on anything.
                due = started + index / args.rate
                time.sleep(max(0.0, due - time.monotonic()))
            kind = kinds[index % len(kinds)]
            client.send(
                kind,
                sample_report(kind, rng),
                report_id=f"{args.id_prefix}{kind}-{uuid.uuid4().hex}",
            )
            sent_kinds[kind] += 1
            now = time.monotonic()
            if now - last_progress >= PROGRESS_EVERY_S:
                last_progress = now
                rate = index / (now - started)
                print(
                    f"produce: {index + 1}/{args.count} sent, {client.stats.confirmed} "
                    f"confirmed, {rate:.0f}/s, broker {client.current_host}",
                    file=sys.stderr,
                )
        client.flush()
    elapsed = time.monotonic() - started
    confirmed_bad = set(client.confirmed_unledgered)
    if args.ledger is not None and bad_sent:
        rejected = Ledger(Path(f"{args.ledger}.rejected"))
        rejected.append(
            rid for rid, message in bad_sent if message.reaches_server and rid in confirmed_bad
        )
        rejected.close()
    stats = client.stats
    by_kind = " ".join(f"{k} {sent_kinds[k]}" for k in kinds)
    unconsumed = sum(1 for _, m in bad_sent if not m.reaches_server)
    print(
        f"produced {sum(sent_kinds.values())} reports ({by_kind}) in {elapsed:.1f} s "
        f"({sum(sent_kinds.values()) / max(elapsed, 1e-9):.0f}/s): "
        f"confirmed {stats.confirmed - len(client.confirmed_unledgered)}, resent {stats.resent}, "
        f"failovers {stats.failovers}, refused {len(stats.refused)}, "
        f"malformed {len(bad_sent)} ({unconsumed} to an unconsumed queue), seed {seed}"
        + (f", ledger {args.ledger}" if args.ledger else "")
    )
    return 1 if stats.refused else 0
