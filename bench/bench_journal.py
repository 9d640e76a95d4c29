"""Journal throughput: appends with fsync for batch sizes 1, 100 and 1000, beside the raw limit of
the disk (os.write + os.fsync of the same bytes) measured in the same run, and read throughput.

    .venv/bin/python bench/bench_journal.py [--seconds 1.5] [--record-bytes 256] [--dir /tmp]

Prints progress and a table; writes bench/results/journal.json.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from storage.journal import Journal
from storage.journal.record import encode_batch

BATCH_SIZES = (1, 100, 1000)
RESULTS = Path(__file__).parent / "results" / "journal.json"


def make_batch(size: int, record_bytes: int) -> list[bytes]:
    return [os.urandom(record_bytes // 2).hex().encode()[:record_bytes] for _ in range(size)]


def timed(step: Callable[[], None], seconds: float) -> tuple[int, float]:
    """Runs `step` until `seconds` have passed; returns (calls, elapsed)."""
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        step()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls, now - started


def bench_journal(directory: Path, batch: list[bytes], seconds: float) -> tuple[float, float]:
    journal = Journal(directory, writer="bench", max_bytes=1 << 40)
    try:
        calls, elapsed = timed(lambda: journal.append_batch(batch), seconds)
    finally:
        journal.close()
    payload = sum(len(r) for r in batch)
    return calls * len(batch) / elapsed, calls * payload / elapsed / 1e6


def bench_raw(directory: Path, batch: list[bytes], seconds: float) -> tuple[float, float]:
    data = encode_batch(batch)  # the same bytes the journal writes
    fd = os.open(directory / "raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def step() -> None:
        os.write(fd, data)
        os.fsync(fd)

    try:
        calls, elapsed = timed(step, seconds)
    finally:
        os.close(fd)
    payload = sum(len(r) for r in batch)
    return calls * len(batch) / elapsed, calls * payload / elapsed / 1e6


def bench_read(directory: Path) -> dict[str, float]:
    started = time.perf_counter()
    journal = Journal.open_readonly(directory)
    opened = time.perf_counter() - started
    records = payload = 0
    started = time.perf_counter()
    for entry in journal.read():
        records += 1
        payload += len(entry.data)
    elapsed = time.perf_counter() - started
    journal.close()
    return {
        "records": records,
        "records_per_s": records / elapsed,
        "mb_per_s": payload / elapsed / 1e6,
        "open_s": opened,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many")
    parser.add_argument("--record-bytes", type=int, default=256)
    parser.add_argument("--dir", default=None, help="where to write (default: the temp dir)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-journal-", dir=args.dir))
    rows = []
    try:
        for size in BATCH_SIZES:
            batch = make_batch(size, args.record_bytes)
            journal_runs, raw_runs = [], []
            for repeat in range(args.repeats):
                # Interleaved, so that both see the same load on the machine.
                journal_runs.append(bench_journal(root / f"j{size}", batch, args.seconds))
                raw_runs.append(bench_raw(root, batch, args.seconds))
                (root / "raw").unlink()
                print(
                    f"batch {size:>4} run {repeat + 1}: journal {journal_runs[-1][0]:>10.0f} "
                    f"records/s, raw {raw_runs[-1][0]:>10.0f} records/s",
                    flush=True,
                )
            row = {
                "batch_records": size,
                "journal_records_per_s": statistics.median(r[0] for r in journal_runs),
                "journal_mb_per_s": statistics.median(r[1] for r in journal_runs),
                "raw_records_per_s": statistics.median(r[0] for r in raw_runs),
                "raw_mb_per_s": statistics.median(r[1] for r in raw_runs),
            }
            row["journal_batches_per_s"] = row["journal_records_per_s"] / size
            row["ratio_to_raw"] = row["journal_records_per_s"] / row["raw_records_per_s"]
            rows.append(row)
        print("reading back the batch-1000 journal ...", flush=True)
        read = bench_read(root / "j1000")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"record payload {args.record_bytes} bytes, fsync per batch, median of {args.repeats}")
    print("| batch | journal appends/s | journal MB/s | raw appends/s | raw MB/s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['batch_records']} | {row['journal_records_per_s']:,.0f} "
            f"| {row['journal_mb_per_s']:.1f} | {row['raw_records_per_s']:,.0f} "
            f"| {row['raw_mb_per_s']:.1f} | {row['ratio_to_raw']:.2f} |"
        )
    print(
        f"read: {read['records_per_s']:,.0f} records/s, {read['mb_per_s']:.0f} MB/s "
        f"({read['records']:,} records; open with full check took {read['open_s']:.2f} s)"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "record_bytes": args.record_bytes,
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "append": rows,
        "read": read,
    }
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
