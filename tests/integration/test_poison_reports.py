"""Poison reports against real ActiveMQ and PostgreSQL or MariaDB: each is rejected once, the rest
stored.

A report the database cannot take (a value too large for an index row, a number jsonb cannot
hold) once stopped all storage: its batch was taken for an outage and retried for ever, and
/status said `database: down`. Here each kind of poison is followed by ordinary reports, through
a running server, with /status sampled all along; and a batch that meets PostgreSQL's statement
timeout is split rather than retried at the same size.
"""

import json
import random
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

import storage.database.engine as engine_module
from reporting.config import BrokerConfig, record_bytes
from reporting.harness.flow import assert_exactly_once
from reporting.harness.waiting import wait_until
from reporting.pipeline import Drainer
from reporting.samples import database_poison, sample_report
from reporting.status.metrics import Metrics
from reporting.wire.producer import ReportClient
from storage.database import Sink
from storage.database.schema import rejected_reports, reports
from storage.journal import Journal
from storage.reports import MAX_TEXT_CHARS, Report, to_record
from tests.conftest import on_databases
from tests.integration.conftest import slow_when_many

pytestmark = pytest.mark.integration

MAX_BODY_BYTES = 8 << 20
ORDINARY_AFTER_EACH = 50


class StatusSampler:
    """Samples the server's /status `database` every 50 ms in a thread of its own."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            status = self.server.try_status(timeout_s=1.0)
            if status is not None:
                self.seen.append(status["database"])

    def __enter__(self) -> "StatusSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def poison_reports(db_url: str, rng: random.Random) -> dict[str, tuple[str, bytes, str]]:
    """report-id -> (kind, body, how it ends): "rejected" with a reason prefix, or "stored"."""
    hex_8k = rng.randbytes(4096).hex()  # the example: 8 KB of random hex

    def cdr(**fields: Any) -> bytes:
        return json.dumps({**sample_report("cdr", rng), **fields}).encode()

    refused, reason = database_poison(db_url, rng)
    return {
        "poison-call-id": ("cdr", cdr(call_id=hex_8k), "field call_id is longer than"),
        "poison-component": ("cdr", cdr(component="c" * 20_000), "field component is longer"),
        "poison-tenant": ("cdr", cdr(tenant="é" * (MAX_TEXT_CHARS + 1)), "field tenant is longer"),
        # Valid, and several MB below max_body_bytes: stored, in a batch of its own.
        "large-payload": ("cdr", cdr(notes=rng.randbytes(2_600_000).hex()), "stored"),
        # Valid for decode: only the database can refuse it.
        "poison-database": ("sq", refused, reason),
    }


@on_databases()
def test_each_poison_report_is_rejected_once_and_the_reports_after_it_are_stored(
    standalone, activemq, db_url, queue_prefix, tmp_path: Path
) -> None:
    # Start-up refuses a journal that cannot hold one batch of the largest bodies.
    server = standalone(
        broker={"max_body_bytes": MAX_BODY_BYTES},
        journal={"max_bytes": BrokerConfig.batch_records * record_bytes(MAX_BODY_BYTES)},
    )
    server.start()
    wait_until(lambda: server.status()["database"] == "up", 30, "database: up")
    rng = random.Random(14)
    poison = poison_reports(db_url, rng)
    ordinary: set[str] = set()
    with StatusSampler(server) as sampler:
        with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20) as client:
            for report_id, (kind, body, _) in poison.items():
                destination = f"/queue/{queue_prefix}gvp.reporting.{kind}"
                client.send_raw(destination, body, report_id=report_id, ledger=False)
                for i in range(ORDINARY_AFTER_EACH):
                    ordinary_kind = ("cdr", "or", "sq", "events")[i % 4]
                    ordinary_id = f"after-{report_id}-{i}"
                    client.send_raw(
                        f"/queue/{queue_prefix}gvp.reporting.{ordinary_kind}",
                        json.dumps(sample_report(ordinary_kind, rng)).encode(),
                        report_id=ordinary_id,
                    )
                    ordinary.add(ordinary_id)
            client.flush()
        assert_exactly_once(db_url, ordinary | {"large-payload"}, timeout_s=90)
        wait_until(lambda: server.status()["journal"]["pending"] == 0, 30, "the journal to drain")

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(rejected_reports.c.report_id, rejected_reports.c.reason)
            ).all()
            large = conn.scalar(
                select(func.length(reports.c.payload["notes"].as_string())).where(
                    reports.c.report_id == "large-payload"
                )
            )
    finally:
        engine.dispose()
    rejected = {row.report_id: row.reason for row in rows}
    assert len(rows) == len(rejected)  # each once
    expected = {i: how for i, (_, _, how) in poison.items() if how != "stored"}
    assert set(rejected) == set(expected)
    for report_id, reason in rejected.items():
        assert reason.startswith(expected[report_id]), (report_id, reason)
    assert large == 5_200_000
    with urllib.request.urlopen(f"http://{server.listen}/metrics", timeout=5) as reply:
        metrics = reply.read().decode()
    assert 'reporting_rejected_reports_total{reason="database refused"} 1.0' in metrics
    assert sampler.seen and set(sampler.seen) == {"up"}, sorted(set(sampler.seen))
    assert server.is_running()


def test_a_batch_that_meets_the_statement_timeout_is_split(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A statement storing more than 10 reports takes 3 s, beyond a statement timeout of 1 s:
    # batches of 40 can never pass, so retrying them as they are would stall the drain.
    monkeypatch.setattr(engine_module, "STATEMENT_TIMEOUT_S", 1)
    sink = Sink(pg_url, cluster="rs", journal="rs")
    sink.upgrade()
    with sink._engine.begin() as conn:
        slow_when_many(conn, rows=10, seconds=3)
    journal = Journal(tmp_path / "journal", writer="rs")
    now = datetime.now(UTC)
    journal.append_batch(
        [to_record(Report(f"r{i}", "sq", "q.sq", {"value": i}, now)) for i in range(40)]
    )
    drainer = Drainer(
        lambda: journal,
        sink,
        batch_records=40,
        metrics=Metrics(),
        on_fenced=lambda exc: None,
        on_room=lambda: None,
        name="rs",
    )
    down: list[bool] = []

    def drained() -> bool:
        down.append(drainer.database_up is False)
        return drainer.drained_records == 40

    started = time.monotonic()
    drainer.start(1)
    try:
        wait_until(drained, 60, "every record drained", every_s=0.05)
        # Two batches met the timeout, 40 and 20 records, each tried once; then batches of 10.
        assert time.monotonic() - started < 30
        assert sink.count_reports() == 40 and sink.count_rejected() == 0
        assert not any(down), "a statement timeout was taken for an outage"
    finally:
        drainer.stop()
        journal.close()
        sink.close()
