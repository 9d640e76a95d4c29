"""Reports per second into PostgreSQL and MariaDB for batches of 1000 reports, by the sink's
way and others, beside each database's plain bulk load of them.

Starts its own PostgreSQL and MariaDB (reporting.harness) in a temporary directory; each method
writes the same reports into a fresh database. The sink's methods each write a whole batch
transaction (fence, reports, journal position); the baseline is the same rows loaded straight
into `reports`, one transaction per batch, with no conflict handling and the rows made
beforehand: the database's own limit (PostgreSQL: COPY; MariaDB: multi-row INSERTs, PyMySQL's
executemany).

    .venv/bin/python bench/bench_sink.py [--batches 30] [--batch-records 1000] [--rounds 3]
        [--databases postgresql mariadb]

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

from reporting.harness import MariaDB, Postgres
from storage.database import Sink, dialects, insert
from storage.database.dialects import Dialect
from storage.database.dialects.mariadb import INSERT_REPORTS
from storage.database.rows import REPORT_COLUMNS, report_row
from storage.database.schema import reports as reports_table
from storage.reports import Report

RESULTS = Path(__file__).parent / "results" / "sink.json"
BASELINE = "plain bulk load (the database's limit)"

# A way to insert a batch's reports in the sink's transaction: (conn, reports, the dialect's
# bulk rows of them) -> how many were stored. None is the sink's own way.
Method = Callable[[Connection, list[Report], list[Any] | None], int] | None


def make_reports(count: int) -> list[Report]:
    """cdr reports with the producer's JSON text, as the drain hands them to the sink."""
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
        body = json.dumps(payload)
        reports.append(Report(f"bench-{i:09d}", "cdr", "gvp.reporting.cdr", payload, at, body))
    return reports


def rows_of(items: list[Report]) -> list[dict[str, Any]]:
    return [report_row(r) for r in items]


def postgresql_methods() -> dict[str, Method]:
    postgresql = dialects.for_name("postgresql")
    return {
        "the sink's way: COPY straight in (staged on a stored id)": None,
        "COPY into a staging table + INSERT SELECT ON CONFLICT": (
            lambda conn, items, bulk: insert.copy_reports_staged(conn, bulk or [])
        ),
        "psycopg executemany (pipeline mode)": (
            lambda conn, items, bulk: insert.executemany_reports(conn, rows_of(items))
        ),
        "multi-row VALUES (SQLAlchemy)": (
            lambda conn, items, bulk: postgresql.insert_many(
                conn, reports_table, rows_of(items), "report_id"
            )
        ),
    }


def mariadb_methods() -> dict[str, Method]:
    mariadb = dialects.for_name("mariadb")
    portable = Dialect()
    return {
        "the sink's way: rows made before the transaction, driver executemany": None,
        "SQLAlchemy executemany of report rows (multi-row too)": (
            lambda conn, items, bulk: mariadb.insert_reports(conn, items, None)
        ),
        "one INSERT ... ON DUPLICATE KEY UPDATE per report": (
            lambda conn, items, bulk: sum(
                mariadb.insert_many(conn, reports_table, [row], "report_id")
                for row in rows_of(items)
            )
        ),
        "portable INSERT ... SELECT ... WHERE NOT EXISTS (executemany)": (
            lambda conn, items, bulk: portable.insert_many(
                conn, reports_table, rows_of(items), "report_id"
            )
        ),
    }


def time_sink(url: str, method: Method, batches: list[list[Report]]) -> dict[str, float]:
    sink = Sink(url, cluster="bench", journal="bench")
    if method is not None:
        # This sink's dialect inserts reports the way under measurement.
        sink._dialect.insert_reports = method  # type: ignore[method-assign]
        sink._dialect.insert_isolating = method  # type: ignore[method-assign]
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


def time_plain_insert(
    maria: MariaDB, database: str, batches: list[list[Report]]
) -> dict[str, float]:
    plain = INSERT_REPORTS.split(" ON DUPLICATE KEY")[0]
    rows_by_batch = [dialects.for_name("mariadb").bulk_rows(batch) for batch in batches]
    with maria.connect() as conn:
        conn.select_db(database)
        conn.autocommit(False)
        started = time.perf_counter()
        for rows in rows_by_batch:
            with conn.cursor() as cursor:
                cursor.executemany(plain, rows)
            conn.commit()
        seconds = time.perf_counter() - started
    rows = sum(len(b) for b in batches)
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def measure(
    server: Postgres | MariaDB,
    methods: dict[str, Method],
    baseline: Callable[[Any, str, list[list[Report]]], dict[str, float]],
    batches: list[list[Report]],
    rounds: int,
) -> dict[str, Any]:
    """Each method and the baseline `rounds` times, in rotated order, into fresh databases of
    `server`; the median round of each (the machine is shared and noisy)."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in [*methods, BASELINE]}
    names = list(runs)
    for round_number in range(rounds):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in order:
            database = f"bench_{round_number}_{names.index(name)}"
            url = server.create_database(database)
            if name == BASELINE:
                Sink(url, cluster="bench", journal="bench").upgrade()
                run = baseline(server, database, batches)
            else:
                run = time_sink(url, methods[name], batches)
            runs[name].append(run)
            print(
                f"{server.name} round {round_number + 1}/{rounds} {name}: "
                f"{run['rows_per_s']:,.0f} rows/s",
                flush=True,
            )
    results: dict[str, Any] = {}
    for name, name_runs in runs.items():
        name_runs.sort(key=lambda run: run["rows_per_s"])
        results[name] = name_runs[len(name_runs) // 2] | {
            "rounds_rows_per_s": [round(run["rows_per_s"]) for run in name_runs]
        }
        print(f"{server.name} median {name}: {results[name]['rows_per_s']:,.0f} rows/s")
    return results


# Each database: its harness server, the ways measured, the baseline.
DATABASES: dict[
    str, tuple[type, Callable[[], dict[str, Method]], Callable[..., dict[str, float]]]
] = {
    "postgresql": (Postgres, postgresql_methods, time_plain_copy),
    "mariadb": (MariaDB, mariadb_methods, time_plain_insert),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-records", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--databases",
        nargs="+",
        choices=["postgresql", "mariadb"],
        default=["postgresql", "mariadb"],
    )
    args = parser.parse_args()

    reports = make_reports(args.batches * args.batch_records)
    batches = [
        reports[i : i + args.batch_records] for i in range(0, len(reports), args.batch_records)
    ]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as workdir:
        for name in args.databases:
            server_class, methods, baseline = DATABASES[name]
            server = server_class(Path(workdir) / name)
            print(f"starting {server.name} in {server.workdir}", flush=True)
            with server:
                results[name] = measure(server, methods(), baseline, batches, args.rounds)
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
