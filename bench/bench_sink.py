"""Rows per second into PostgreSQL for batches of 1000 reports, beside a plain COPY of them.

Starts its own PostgreSQL (reporting.harness) in a temporary directory; each method writes the
same reports into a fresh database. The sink's methods each write a whole batch transaction
(fence, reports, journal position); "plain COPY" is the same rows COPYed straight into `reports`,
one transaction per batch, with no conflict handling: the database's own limit.

    .venv/bin/python bench/bench_sink.py [--batches 30] [--batch-records 1000] [--rounds 3]

Writes bench/results/sink.json.
"""

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from reporting.harness import Postgres
from storage.database import Sink, dialects, insert
from storage.database.rows import REPORT_COLUMNS, report_row
from storage.reports import Report

RESULTS = Path(__file__).parent / "results" / "sink.json"


def make_reports(count: int) -> list[Report]:
    start = datetime(2024, 5, 1, tzinfo=UTC)
    reports = []
    for i in range(count):
        at = start + timedelta(seconds=i)
        payload = {
            "call_id": f"call-{i:09d}",
            "component": f"mcp-{i % 8}",
            "tenant": f"tenant-{i % 50}",
            "ivr_profile": "default",
            "start": at.isoformat(),
            "end": (at + timedelta(seconds=90)).isoformat(),
            "dnis": "18005550100",
            "ani": f"1555{i % 10_000_000:07d}",
        }
        reports.append(Report(f"bench-{i:09d}", "cdr", "gvp.reporting.cdr", payload, at))
    return reports


class MethodSink(Sink):
    """The sink with its report insert swapped for the method under measurement."""

    def __init__(self, url: str, method: Callable[[Connection, list[Report]], int]):
        super().__init__(url, cluster="bench", journal="bench")
        self._method = method

    def _insert_reports(
        self, conn: Connection, items: list[Report], copy_rows: list[list[Any]] | None
    ) -> int:
        return self._method(conn, items)


def time_sink(url: str, method: Callable, batches: list[list[Report]]) -> dict[str, float]:
    sink = MethodSink(url, method)
    sink.upgrade()
    sink.claim_epoch(1)
    started = time.perf_counter()
    stored = 0
    for number, batch in enumerate(batches):
        result = sink.write_batch(batch, positions={"00000001": number + 1}, epoch=1)
        stored += result.stored
    seconds = time.perf_counter() - started
    # The same batches again: what a replay after a lost commit costs (all duplicates).
    started = time.perf_counter()
    for number, batch in enumerate(batches):
        sink.write_batch(batch, positions={"00000001": number + 1}, epoch=1)
    replay_s = time.perf_counter() - started
    assert stored == sum(len(b) for b in batches) == sink.count_reports()
    sink.close()
    rows = sum(len(b) for b in batches)
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "replay_rows_per_s": rows / replay_s,
    }


def time_plain_copy(pg: Postgres, database: str, batches: list[list[Report]]) -> dict[str, float]:
    columns = ", ".join(REPORT_COLUMNS)
    rows_by_batch = [[report_row(r) for r in batch] for batch in batches]
    with pg.connect(database) as conn:
        started = time.perf_counter()
        for rows in rows_by_batch:
            with conn.cursor() as cursor:
                with cursor.copy(f"COPY reports ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(
                            tuple(
                                json.dumps(row[c]) if c == "payload" else row[c]
                                for c in REPORT_COLUMNS
                            )
                        )
            conn.commit()
        seconds = time.perf_counter() - started
    rows = sum(len(b) for b in batches)
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-records", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    reports = make_reports(args.batches * args.batch_records)
    batches = [
        reports[i : i + args.batch_records] for i in range(0, len(reports), args.batch_records)
    ]
    methods: dict[str, Callable] = {
        "COPY straight in (staged on a stored id)": lambda conn, reports: insert.copy_reports(
            conn, insert.copy_values(reports)
        ),
        "copy + INSERT SELECT ON CONFLICT": lambda conn, reports: insert.copy_reports_staged(
            conn, insert.copy_values(reports)
        ),
        "executemany (pipeline)": lambda conn, reports: insert.executemany_reports(
            conn, [report_row(r) for r in reports]
        ),
        "multi-row VALUES RETURNING": lambda conn, reports: dialects.for_name(
            "postgresql"
        ).insert_many(conn, insert.reports, [report_row(r) for r in reports], "report_id"),
    }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as workdir:
        pg = Postgres(workdir)
        print(f"starting PostgreSQL in {workdir}", flush=True)
        pg.start()
        try:
            # Rounds in rotated order, median kept: the machine is shared and noisy.
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
            runs["plain COPY"] = []
            names = list(runs)
            for round_number in range(args.rounds):
                order = names[round_number % len(names) :] + names[: round_number % len(names)]
                for name in order:
                    database = f"bench_{round_number}_{names.index(name)}"
                    url = pg.create_database(database)
                    if name == "plain COPY":
                        Sink(url, cluster="bench", journal="bench").upgrade()
                        run = time_plain_copy(pg, database, batches)
                    else:
                        run = time_sink(url, methods[name], batches)
                    runs[name].append(run)
                    print(
                        f"round {round_number + 1}/{args.rounds} {name}: "
                        f"{run['rows_per_s']:,.0f} rows/s",
                        flush=True,
                    )
            for name, name_runs in runs.items():
                name_runs.sort(key=lambda run: run["rows_per_s"])
                results[name] = name_runs[len(name_runs) // 2] | {
                    "rounds_rows_per_s": [round(run["rows_per_s"]) for run in name_runs]
                }
                print(f"median {name}: {results[name]['rows_per_s']:,.0f} rows/s", flush=True)
        finally:
            pg.stop()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "batch_records": args.batch_records,
        "batches": args.batches,
        "rounds": args.rounds,
        "machine": platform.platform(),
        "results": results,
    }
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
