"""The drainer against a journal and an SQLite sink: what the database loses is replayed."""

import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, func, select, update

from reporting.harness import waiting
from reporting.pipeline import Drainer
from reporting.status.metrics import Metrics
from storage.database import Batch, Sink
from storage.database.schema import journal_positions, rejected_reports, reports
from storage.errors import StatementTimeout
from storage.journal import Journal
from storage.reports import Rejected, Report, to_record


def batch(start: int, count: int) -> list[bytes]:
    now = datetime.now(UTC)
    return [
        to_record(Report(f"r{i}", "sq", "gvp.reporting.sq", {"value": i}, now))
        for i in range(start, start + count)
    ]


# What these tests wait for is published by the drainer's thread within a second or so.
wait_until = functools.partial(waiting.wait_until, timeout_s=20, every_s=0.02)


def count(sink: Sink) -> int:
    with sink._engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(reports)).scalar_one()


def sqlite_sink(tmp_path: Path) -> Sink:
    sink = Sink(f"sqlite:///{tmp_path / 'r.db'}", cluster="rs", journal="rs")
    sink.upgrade()
    return sink


def drainer_for(  # type: ignore[no-untyped-def]
    journal: Journal,
    sink: Sink,
    *,
    metrics: Metrics | None = None,
    on_fenced=lambda exc: None,
    on_room=lambda: None,
    **options,
) -> Drainer:
    return Drainer(
        lambda: journal,
        sink,
        metrics=metrics or Metrics(),
        on_fenced=on_fenced,
        on_room=on_room,
        name="rs",
        **options,
    )


@contextmanager
def draining(journal: Journal, sink: Sink, epoch: int, **options) -> Iterator[Drainer]:  # type: ignore[no-untyped-def]
    """A drainer started under `epoch`; stopped, and the journal and sink closed, on the way out."""
    drainer = drainer_for(journal, sink, **options)
    drainer.start(epoch)
    try:
        yield drainer
    finally:
        drainer.stop()
        journal.close()
        sink.close()


def lose_commits(sink: Sink, report_ids: range, *, byte: int) -> None:
    """The database loses the commits of these reports, as a promoted asynchronous standby would."""
    with sink._engine.begin() as conn:
        conn.execute(delete(reports).where(reports.c.report_id.in_([f"r{i}" for i in report_ids])))
        conn.execute(update(journal_positions).values(byte=byte))


def test_commits_the_database_lost_are_replayed_from_the_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", writer="rs", retain_s=3600)
    sink = sqlite_sink(tmp_path)
    metrics = Metrics()
    fenced: list[Exception] = []
    options = {"batch_records": 100, "metrics": metrics, "on_fenced": fenced.append}
    with draining(journal, sink, 0, **options) as drainer:
        journal.append_batch(batch(0, 100))
        kept = journal.append_batch(batch(100, 100))
        drainer.wake()
        wait_until(lambda: count(sink) == 200)
        journal.append_batch(batch(200, 100))
        drainer.wake()
        wait_until(lambda: count(sink) == 300)
        lose_commits(sink, range(200, 300), byte=kept.byte)
        journal.append_batch(batch(300, 100))
        drainer.wake()
        wait_until(lambda: count(sink) == 400)
        assert metrics.rewound._value.get() == 1
        assert not fenced
        with sink._engine.connect() as conn:
            ids = {r for (r,) in conn.execute(select(reports.c.report_id))}
        assert ids == {f"r{i}" for i in range(400)}


def test_retained_segments_outlive_their_drain(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", writer="rs", segment_bytes=4096, retain_s=3600)
    first = journal.append_batch(batch(0, 30))
    journal.append_batch(batch(30, 30))
    assert journal.release({first.segment: first.byte}) == []
    journal.close()
    journal = Journal(tmp_path / "j", writer="rs", segment_bytes=4096, retain_s=0)
    assert journal.release({first.segment: first.byte}) == [first.segment]
    journal.close()


def test_stop_is_prompt_while_the_database_is_down(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", writer="rs")
    sink = Sink(f"sqlite:///{tmp_path / 'missing' / 'r.db'}", cluster="rs", journal="rs")
    drainer = drainer_for(journal, sink, batch_records=10)
    drainer.start(0)
    wait_until(lambda: drainer.database_up is False)
    started = time.monotonic()
    drainer.stop()
    assert time.monotonic() - started < 5
    assert not any(t.name == "rs-drainer" and t.is_alive() for t in threading.enumerate())
    journal.close()
    sink.close()


def test_an_idle_drainer_notices_lost_commits(tmp_path: Path, monkeypatch) -> None:
    import reporting.pipeline.drainer as pipeline

    monkeypatch.setattr(pipeline, "VERIFY_IDLE_S", 0.2)
    journal = Journal(tmp_path / "journal", writer="rs", retain_s=3600)
    sink = sqlite_sink(tmp_path)
    metrics = Metrics()
    with draining(journal, sink, 0, batch_records=100, metrics=metrics) as drainer:
        kept = journal.append_batch(batch(0, 100))
        journal.append_batch(batch(100, 100))
        drainer.wake()
        wait_until(lambda: count(sink) == 200)
        lose_commits(sink, range(100, 200), byte=kept.byte)
        wait_until(lambda: count(sink) == 200)
        assert metrics.rewound._value.get() == 1


def test_read_ahead_drains_every_record_once_across_segments(tmp_path: Path) -> None:
    # Small segments and batches: the read-ahead crosses segment ends and releases, and the
    # journal grows while it reads.
    journal = Journal(tmp_path / "journal", writer="rs", segment_bytes=4096)
    sink = sqlite_sink(tmp_path)
    with draining(journal, sink, 0, batch_records=7) as drainer:
        for start in range(0, 600, 40):
            journal.append_batch(batch(start, 40))
            drainer.wake()
        wait_until(lambda: drainer.drained_records == 600)
        with sink._engine.connect() as conn:
            ids = [r for (r,) in conn.execute(select(reports.c.report_id))]
        assert sorted(ids) == sorted(f"r{i}" for i in range(600))
        assert drainer.stored == 600
        wait_until(lambda: journal.pending.records == 0)


def test_a_drainer_started_under_a_fenced_off_epoch_ends_and_the_wait_says_so_at_once(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "journal", writer="rs")
    sink = sqlite_sink(tmp_path)
    sink.claim_epoch(7)  # a newer holder took the role meanwhile
    fenced: list[Exception] = []
    journal.append_batch(batch(0, 10))
    with draining(journal, sink, 3, batch_records=100, on_fenced=fenced.append) as drainer:
        started = time.monotonic()
        assert drainer.wait_caught_up(30) is False
        assert time.monotonic() - started < 5, "the wait outlived the drainer"
        assert not drainer.running
        assert fenced and fenced[0].epoch == 3
        assert drainer.stopped_because is not None and "fenced" in drainer.stopped_because
        # Nothing was written under the stale epoch.
        assert count(sink) == 0


def test_a_new_holder_raises_the_fence_before_its_first_batch(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", writer="rs")
    sink = sqlite_sink(tmp_path)
    with draining(journal, sink, 5, batch_records=100) as drainer:
        assert drainer.wait_caught_up(30)
        # Nothing was drained, and yet a stale holder's write of epoch 4 is refused already.
        assert sink.fence_epoch() == 5


class RecordingSink(Sink):
    """A SQLite sink that notes each batch it is handed, and fails those over `fail_over`
    records with StatementTimeout, as PostgreSQL does when a statement runs too long."""

    def __init__(self, path: Path, *, fail_over: int | None = None) -> None:
        super().__init__(f"sqlite:///{path}", cluster="rs", journal="rs")
        self.fail_over = fail_over
        self.batches: list[list[Report | Rejected]] = []
        self.timeouts = 0

    def write_batch(self, items, **kwargs):  # type: ignore[no-untyped-def]
        items = items.items if isinstance(items, Batch) else items
        self.batches.append(list(items))
        if self.fail_over is not None and len(items) > self.fail_over:
            self.timeouts += 1
            raise StatementTimeout("canceling statement due to statement timeout")
        return super().write_batch(items, **kwargs)


def sized(start: int, sizes: list[int]) -> list[bytes]:
    now = datetime.now(UTC)
    return [
        to_record(Report(f"r{start + i}", "sq", "gvp.reporting.sq", {"pad": "x" * n}, now))
        for i, n in enumerate(sizes)
    ]


def test_a_batch_is_bounded_by_bytes_as_well_as_records(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", writer="rs")
    sink = RecordingSink(tmp_path / "r.db")
    sink.upgrade()
    # Mostly 3 KB records, one of 15 KB (over the bound: a batch of its own), small ones after.
    records = sized(0, [3000] * 10 + [15_000] + [3000] * 10 + [10] * 50)
    journal.append_batch(records)
    with draining(journal, sink, 1, batch_records=100, batch_bytes=10_000) as drainer:
        wait_until(lambda: drainer.drained_records == len(records))
        assert count(sink) == len(records)
        sizes = [(len(b), sum(len(to_record(item)) for item in b)) for b in sink.batches]
        assert all(size <= 10_000 for records, size in sizes if records > 1), sizes
        assert [records for records, size in sizes if size > 10_000] == [1], sizes
        assert len(sizes) >= 8, sizes  # not one batch of 71


def test_a_batch_that_meets_the_statement_timeout_is_split_not_retried(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", writer="rs")
    sink = RecordingSink(tmp_path / "r.db", fail_over=6)
    sink.upgrade()
    journal.append_batch(batch(0, 100))
    with draining(journal, sink, 1, batch_records=50) as drainer:
        wait_until(lambda: drainer.drained_records == 100)
        assert count(sink) == 100
        # 50 timed out, then 25, then 12: each retry half the batch that timed out, from the
        # same record on; then 20 batches of 6 are stored before it tries 12 again.
        sizes = [len(b) for b in sink.batches]
        assert sizes[:4] == [50, 25, 12, 6], sizes
        assert [b[0].report_id for b in sink.batches[:4]] == ["r0"] * 4
        assert sink.timeouts == 3 and drainer.database_up is True


UNDECODABLE = b"\x00 not a journal record's JSON"

DRAIN_ONCE = """
import sys
from pathlib import Path
from reporting.pipeline import Drainer
from reporting.status.metrics import Metrics
from storage.database import Sink
from storage.journal import Journal

journal = Journal(Path(sys.argv[1]), writer="rs", retain_s=3600)
sink = Sink(sys.argv[2], cluster="rs", journal="rs")
sink.upgrade()
drainer = Drainer(lambda: journal, sink, batch_records=10, metrics=Metrics(),
                  on_fenced=print, on_room=lambda: None, name="rs")
drainer.start(int(sys.argv[3]))
assert drainer.wait_caught_up(30)
drainer.stop()
journal.close()
sink.close()
"""


def test_an_undecodable_record_is_rejected_once_whichever_process_drains_it(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "journal", writer="rs", retain_s=3600)
    journal.append_batch([UNDECODABLE, *batch(0, 3)])
    journal.close()
    url = f"sqlite:///{tmp_path / 'r.db'}"
    for seed in ("1", "2"):
        # Another process, another hash seed and epoch: as after a restart. The database lost
        # the positions in between (a standby promoted), so the record is drained again.
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, "-c", DRAIN_ONCE, str(tmp_path / "journal"), url, seed],
            check=True,
            env=env,
            timeout=60,
        )
        sink = Sink(url, cluster="rs", journal="rs")
        with sink._engine.begin() as conn:
            conn.execute(delete(journal_positions))
        sink.close()
    sink = Sink(url, cluster="rs", journal="rs")
    try:
        with sink._engine.connect() as conn:
            rows = list(conn.execute(select(rejected_reports.c.report_id, rejected_reports.c.raw)))
        assert len(rows) == 1
        assert rows[0].report_id.startswith("undecodable-") and bytes(rows[0].raw) == UNDECODABLE
        assert count(sink) == 3
    finally:
        sink.close()


def test_a_record_whose_payload_is_not_an_object_is_rejected_and_the_drain_goes_on(
    tmp_path: Path,
) -> None:
    # Valid JSON and checksum, wrong shape: the rows of its batch could never be built.
    odd = b'{"t":"r","id":"odd","k":"sq","q":"gvp.reporting.sq","p":[1],"at":"2024-05-01T00:00"}'
    journal = Journal(tmp_path / "journal", writer="rs")
    journal.append_batch([*batch(0, 5), odd, *batch(5, 5)])
    sink = sqlite_sink(tmp_path)
    with draining(journal, sink, 1, batch_records=100) as drainer:
        wait_until(lambda: drainer.drained_records == 11)
        assert count(sink) == 10
        with sink._engine.connect() as conn:
            rows = list(conn.execute(select(rejected_reports.c.report_id, rejected_reports.c.raw)))
        assert len(rows) == 1 and bytes(rows[0].raw) == odd
