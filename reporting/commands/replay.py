"""`reporting-server replay --config FILE`: drain the journal into the database now, with progress.

For an instance that is stopped (or a journal carried over from another host). It writes with the
fence's current epoch, so a newer active instance still fences it off.
"""

import argparse
import sys
import threading
import time
from pathlib import Path

from reporting.config import Config, load_config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("replay", help="drain the journal into the database now")
    parser.add_argument("--config", required=True, help="the instance's TOML file")
    parser.add_argument(
        "--timeout", type=float, default=0.0, help="give up after this many seconds (0: never)"
    )
    parser.set_defaults(func=replay)


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width if total <= 0 else min(width, width * done // total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def replay(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    started = time.monotonic()
    for folder, cluster, key in config.journals:
        remaining = args.timeout - (time.monotonic() - started) if args.timeout else 0.0
        if args.timeout and remaining <= 0:
            print(f"replay: gave up after {args.timeout:.0f} s", file=sys.stderr)
            return 1
        if len(config.journals) > 1:
            print(f"replay: {folder}", file=sys.stderr)
        code = _replay_one(config, folder, cluster, key, timeout_s=remaining)
        if code:
            return code
    return 0


def _replay_one(config: Config, folder: Path, cluster: str, key: str, *, timeout_s: float) -> int:
    from reporting.pipeline import Drainer
    from reporting.status.metrics import Metrics
    from storage.database import Sink
    from storage.journal import Journal

    journal = Journal(
        folder,
        writer=f"{config.name}-replay",
        max_bytes=config.journal.max_bytes,
        segment_bytes=config.journal.segment_bytes,
    )
    sink = Sink(config.database.url, cluster=cluster, journal=key)
    fenced: list[Exception] = []
    done = threading.Event()
    drainer = Drainer(
        lambda: journal,
        sink,
        batch_records=config.database.batch_records,
        epoch=lambda: sink.fence_epoch() or 0,
        metrics=Metrics(),
        on_fenced=lambda exc: (fenced.append(exc), done.set()),
        on_room=lambda: None,
        name=config.name,
    )
    total = journal.pending.records
    started = time.monotonic()
    drainer.start()
    try:
        while not done.is_set():
            if drainer.wait_caught_up(0.5):
                break
            if timeout_s and time.monotonic() - started > timeout_s:
                print(f"\nreplay: gave up after {timeout_s:.0f} s", file=sys.stderr)
                return 1
            state = "database down, retrying" if drainer.database_up is False else "draining"
            print(
                f"\r{_bar(drainer.drained_records, total)} {drainer.drained_records}/{total} "
                f"records ({state})",
                end="",
                file=sys.stderr,
                flush=True,
            )
    finally:
        drainer.stop()
        journal.close()
        sink.close()
    if fenced:
        print(f"\nreplay: refused by the fence: {fenced[0]}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(
        f"\r{_bar(1, 1)} replayed {drainer.drained_records} records "
        f"({drainer.stored} new reports) in {elapsed:.1f} s",
        file=sys.stderr,
    )
    return 0
