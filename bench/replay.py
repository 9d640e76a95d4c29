"""Replay: a journal of N records drained into PostgreSQL by the Drainer and the Sink, beside a
plain COPY of the same rows into the same schema (the database's own limit).

The drain runs in this process, as `reporting-server replay` would: journal read, record decode,
rows, one transaction per `database.batch_records` batch with the fence and the positions. The
journal's records are what the intake writes (bench.backlog), the producer's JSON text in each.
The COPY times only the COPY and commit of each batch, its text made beforehand from the same
records exactly as the drain hands it to COPY (`storage.database.insert.copy_rows`).
"""

import gc
import threading
import time
from typing import Any

from bench.backlog import build, template
from bench.servers import Servers, best_of, say
from reporting.commands.run import collect_rarely
from reporting.config import DatabaseConfig
from reporting.pipeline import Drainer
from reporting.status.metrics import Metrics
from storage.database import Sink
from storage.database.insert import copy_rows
from storage.database.rows import REPORT_COLUMNS
from storage.journal import Journal
from storage.reports import Report, from_record


def _drain(servers: Servers, count: int) -> dict[str, float]:
    workdir = servers.workdir("replay")
    journal = Journal(
        build(servers.root, workdir / "journal", count), writer="bench-drainer", max_bytes=1 << 40
    )
    sink = Sink(servers.database("replay"), cluster="bench-replay", journal="bench-replay")
    sink.upgrade()
    fenced = threading.Event()
    drainer = Drainer(
        lambda: journal,
        sink,
        batch_records=DatabaseConfig().batch_records,
        metrics=Metrics(),
        on_fenced=lambda exc: fenced.set(),
        on_room=lambda: None,
        name="bench-replay",
    )
    say(f"  draining {count:,} records")
    collector = gc.get_threshold()
    collect_rarely()  # as `reporting-server replay` does before it drains
    started = time.monotonic()
    drainer.start(1)
    try:
        deadline = started + max(300, count / 1000)
        last_said = started
        while drainer.drained_records < count and time.monotonic() < deadline:
            if fenced.is_set() or not drainer.running:
                raise RuntimeError("the drainer stopped before the end of the journal")
            time.sleep(0.05)
            if time.monotonic() - last_said >= 10:
                last_said = time.monotonic()
                say(f"  drained {drainer.drained_records:,}/{count:,}")
        seconds = time.monotonic() - started
    finally:
        drainer.stop()
        journal.close()
        # The rest of the bench run measures other things in this process.
        gc.unfreeze()
        gc.set_threshold(*collector)
    stored = sink.count_reports()
    sink.close()
    if stored != count:
        raise RuntimeError(f"replay stored {stored} of {count}")
    return {"records": count, "seconds": seconds, "records_per_s": count / seconds}


def _plain_copy(servers: Servers, count: int) -> dict[str, float]:
    url = servers.database("copy")
    Sink(url, cluster="bench-copy", journal="bench-copy").upgrade()
    database = url.rsplit("/", 1)[1]
    columns = ", ".join(REPORT_COLUMNS)
    reader = Journal.open_readonly(template(servers.root, count))
    seconds = 0.0
    copied = 0
    reports: list[Report] = []
    with servers.postgres.connect(database) as conn:

        def copy() -> float:
            # The COPY text exactly as the drain hands it to COPY (the producer's text for the
            # payload, times as text), made before the clock starts.
            text = copy_rows(reports).text
            assert text is not None
            started = time.monotonic()
            with conn.cursor() as cursor:
                with cursor.copy(f"COPY reports ({columns}) FROM STDIN") as writer:
                    writer.write(text)
            conn.commit()
            return time.monotonic() - started

        for entry in reader.read():
            report = from_record(entry.data)
            assert isinstance(report, Report)
            reports.append(report)
            if len(reports) == DatabaseConfig().batch_records:
                seconds += copy()
                copied += len(reports)
                reports = []
                if copied % 200_000 == 0:
                    say(f"  copied {copied:,}/{count:,}")
        if reports:
            seconds += copy()
            copied += len(reports)
    reader.close()
    return {"records": copied, "seconds": seconds, "records_per_s": copied / seconds}


def run(servers: Servers, *, count: int, rounds: int = 1) -> dict[str, Any]:
    # The drain and the plain COPY one after the other, `rounds` times, so that a machine whose
    # speed drifts slows each alike; each figure is the best of its runs.
    drains, copies = [], []
    for round_ in range(1, rounds + 1):
        say(f"round {round_} of {rounds}")
        drains.append(_drain(servers, count))
        say(f"  drainer: {drains[-1]['records_per_s']:,.0f} records/s")
        copies.append(_plain_copy(servers, count))
        say(f"  plain COPY: {copies[-1]['records_per_s']:,.0f} records/s")
    result: dict[str, Any] = {
        "rounds": rounds,
        "drain": best_of(drains, "records_per_s"),
        "copy": best_of(copies, "records_per_s"),
    }
    result["ratio_to_copy"] = result["drain"]["records_per_s"] / result["copy"]["records_per_s"]
    return result
