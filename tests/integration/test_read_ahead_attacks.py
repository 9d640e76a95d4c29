"""Attacks on the drainer's read-ahead and its topped-up batches, through the Journal API, the
Sink, the Drainer and a running server (the harness's PostgreSQL, ActiveMQ; SQLite for the quick
ones), with what the database holds read back at the end.

The change attacked (reporting/pipeline/drainer.py, storage/database/sink.py, insert.py):
- `Drainer._read` lets the interpreter lock go every 20 records while it iterates the journal's
  records (`_paced`), not only while it decodes them; breaking out at the byte bound must still
  close the segment and give exactly the records it appended.
- `Drainer._next_batch` joins a read-ahead batch that stopped at the journal's end with the
  records appended since by `Sink.join`; on PostgreSQL `CopyRows.join` keeps the COPY text of
  the joined rows (None if a part has none), elsewhere `Dialect.join_bulk` joins plain lists.

Most tests make every batch a joined one on purpose: the drainer's journal is a `GatedJournal`,
whose reads in the read-ahead thread wait for the test, and its sink a `WatchedSink`, which runs
a hook before each write. Before batch k is written the hook appends part A of batch k+1, lets
the read-ahead read it, waits for that read to end, and appends part B: batch k+1 is then A
(the read-ahead) joined with B (the top-up). Every batch written is recorded; at the end the
batches stored, in order, must be exactly the records appended, in order (none lost, none read
twice), and the database must hold each report once and each rejected record once.
"""

import hashlib
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

import reporting.pipeline.drainer as drainer_module
import storage.database.engine as engine_module
from reporting.harness.flow import assert_exactly_once
from reporting.harness.waiting import wait_until
from reporting.pipeline import Drainer
from reporting.samples import sample_report
from reporting.status.metrics import Metrics
from storage.database import Batch, Sink
from storage.database.insert import CopyRows, copy_text
from storage.database.schema import rejected_reports, reports
from storage.errors import JournalFull
from storage.journal import Journal
from storage.reports import KINDS, Rejected, Report, to_record
from tests.integration.conftest import slow_when_many

NAME = "rs"
QUEUE = "t.gvp.reporting"
NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
GATE_S = 10.0  # no read-ahead waits longer than this for the test (a failure, not a hang)


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    """One journal record and what it must become: `stored` in reports, or a row of
    rejected_reports under `rejected_id` (a rejected message, undecodable bytes, a refused
    report)."""

    data: bytes
    item_id: str  # the report_id the drainer's item has (a digest for undecodable bytes)
    stored: str | None = None
    rejected_id: str | None = None
    refused: bool = False  # rejected by the database, not by decode


def _queue(kind: str) -> str:
    return f"{QUEUE}.{kind}"


def new_report(rid: str, kind: str, rng: random.Random, **fields: Any) -> Rec:
    """An "R" record: the producer's text and the typed columns in its head."""
    payload = {**sample_report(kind, rng), **fields}
    body = json.dumps(payload)
    report = Report(rid, kind, _queue(kind), payload, NOW, body)
    return Rec(to_record(report), rid, stored=rid)


def old_report(rid: str, kind: str, rng: random.Random, **fields: Any) -> Rec:
    """An old-format "r" record: the parsed payload, no text, no typed columns."""
    payload = {**sample_report(kind, rng), **fields}
    return Rec(to_record(Report(rid, kind, _queue(kind), payload, NOW)), rid, stored=rid)


def rejected(rid: str) -> Rec:
    data = to_record(Rejected(rid, _queue("sq"), "not JSON", b"\x00\xff" + rid.encode(), NOW))
    return Rec(data, rid, rejected_id=rid)


def undecodable(tag: str) -> Rec:
    data = b"\xffnot a record " + tag.encode()
    rid = f"undecodable-{hashlib.blake2b(data, digest_size=16).hexdigest()}"
    return Rec(data, rid, rejected_id=rid)


def poison_bigint(rid: str, rng: random.Random) -> Rec:
    """An "or" report whose `arrivals` is beyond bigint: decode takes it, the database refuses
    the row (its COPY text holds the digits, and so do its rows)."""
    payload = {**sample_report("or", rng), "arrivals": 2**63}
    return Rec(
        to_record(Report(rid, "or", _queue("or"), payload, NOW)), rid, rejected_id=rid, refused=True
    )


def poison_jsonb(rid: str, rng: random.Random) -> Rec:
    """An "R" sq report whose payload text holds a number jsonb cannot hold (1e-20000)."""
    payload = sample_report("sq", rng)
    body = json.dumps(payload)[:-1] + ', "tiny": 1e-20000}'
    report = Report(rid, "sq", _queue("sq"), {**payload, "tiny": 0.0}, NOW, body)
    return Rec(to_record(report), rid, rejected_id=rid, refused=True)


def surrogate_report(rid: str, rng: random.Random) -> Rec:
    """An old-format report whose call_id (a typed column) holds a lone surrogate, as a record
    written from `json.loads` of a "\\ud800" escape: COPY text cannot carry it (copy_text gives
    None), psycopg cannot send it row by row either, so the database path refuses it."""
    payload = sample_report("cdr", rng)
    doc = {
        "t": "r",
        "id": rid,
        "k": "cdr",
        "q": _queue("cdr"),
        "at": NOW.isoformat(),
        "p": {**payload, "call_id": "\ud800x"},
    }
    data = json.dumps(doc, separators=(",", ":")).encode("ascii")  # the surrogate as \ud800
    return Rec(data, rid, rejected_id=rid, refused=True)


def mixed(prefix: str, count: int, rng: random.Random) -> list[Rec]:
    """`count` records of every kind in turn: new and old reports of each kind, a rejected
    message, undecodable bytes."""
    out = []
    for i in range(count):
        rid = f"{prefix}-{i}-{uuid.uuid4().hex[:6]}"
        kind = KINDS[i % len(KINDS)]
        shape = rng.randrange(10)
        if shape < 5:
            out.append(new_report(rid, kind, rng))
        elif shape < 8:
            out.append(old_report(rid, kind, rng))
        elif shape == 8:
            out.append(rejected(rid))
        else:
            out.append(undecodable(rid))
    return out


# -- the drainer's journal and sink, watched ---------------------------------------------------


class GatedJournal:
    """A Journal as the drainer sees it. While `gated`, a read made in the read-ahead thread
    waits for a ticket (`let_reader_read`). Every read is recorded: its thread, arguments and the
    entries it gave; `open_reads` counts, per thread, the reads not closed yet."""

    def __init__(self, journal: Journal) -> None:
        self.inner = journal
        self.gated = False
        self._cond = threading.Condition()
        self._tickets = 0
        self._finished = 0
        self.gate_timeouts = 0
        self.open_reads: dict[int, int] = {}
        self.reads: list[dict[str, Any]] = []
        # Called in the drainer's thread after each release, before it reads again.
        self.after_release: Callable[[list[str]], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read(self, start: Any = None, *, max_records: int | None = None) -> Iterator[Any]:
        thread = threading.current_thread()
        reader = "-reader" in thread.name
        if reader:
            with self._cond:
                if not self._cond.wait_for(lambda: self._tickets > 0 or not self.gated, GATE_S):
                    self.gate_timeouts += 1
                if self._tickets > 0:
                    self._tickets -= 1
        record = {
            "thread": thread.name,
            "reader": reader,
            "start": dict(start or {}),
            "max_records": max_records,
            "entries": [],
            "closed": False,
        }
        self.reads.append(record)
        inner = self.inner.read(start, max_records=max_records)
        with self._cond:
            self.open_reads[thread.ident] = self.open_reads.get(thread.ident, 0) + 1
        return self._wrapped(inner, record, thread.ident, reader)

    def _wrapped(self, inner: Iterator[Any], record: dict, ident: int, reader: bool) -> Iterator:
        try:
            for entry in inner:
                record["entries"].append(entry)
                yield entry
        finally:
            inner.close()  # type: ignore[attr-defined]
            record["closed"] = True
            with self._cond:
                self.open_reads[ident] -= 1
                if reader:
                    self._finished += 1
                self._cond.notify_all()

    def let_reader_read(self) -> bool:
        """One read of the read-ahead may go; True once it has read and closed its records."""
        with self._cond:
            before = self._finished
            self._tickets += 1
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._finished > before, GATE_S)

    def open_gate(self) -> None:
        with self._cond:
            self.gated = False
            self._cond.notify_all()

    def release(self, drained: Any) -> list[str]:
        released = self.inner.release(drained)
        if self.after_release is not None:
            self.after_release(released)
        return released


@dataclass
class Written:
    ids: list[str]
    text: bool | None  # whether its COPY rows had text; None where the dialect has no COPY rows
    problems: list[str] = field(default_factory=list)


class WatchedSink(Sink):
    """A Sink that runs `before_write` before each batch and records every batch written (and
    whether its rows and COPY text match its reports)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before_write: Callable[[Batch], None] | None = None
        self.written: list[Written] = []  # batches the database took, in order
        self.attempts = 0  # batches handed to write_batch_retrying
        self.tries = 0  # transactions tried (a retried batch is tried again)
        self.problems: list[str] = []
        self.journal_view: GatedJournal | None = None

    def prepare(self, items: Sequence[Report | Rejected]) -> Batch:
        # The drainer prepares a batch after it let go of the journal's records: the segment
        # it stopped in is closed by then (`del records`).
        view = self.journal_view
        if view is not None:
            still_open = view.open_reads.get(threading.get_ident(), 0)
            if still_open:
                self.problems.append(f"{still_open} journal read(s) still open when preparing")
        return super().prepare(items)

    def write_batch(self, items: Any, **kwargs: Any) -> Any:
        self.tries += 1
        return super().write_batch(items, **kwargs)

    def write_batch_retrying(self, items: Any, **kwargs: Any) -> Any:
        assert isinstance(items, Batch)
        self.attempts += 1
        problems = batch_problems(items)
        if self.before_write is not None:
            self.before_write(items)
        result = super().write_batch_retrying(items, **kwargs)
        copy_rows = items.copy_rows
        has_text = copy_rows.text is not None if isinstance(copy_rows, CopyRows) else None
        self.written.append(Written([i.report_id for i in items.items], has_text, problems))
        return result


def batch_problems(batch: Batch) -> list[str]:
    """What is wrong in a batch: its rows not one a report and in their order, or its COPY text
    not the text of its rows."""
    problems = []
    reports_ = [item for item in batch.items if isinstance(item, Report)]
    if [r.report_id for r in reports_] != [r.report_id for r in batch.reports]:
        problems.append("batch.reports are not the batch's reports in order")
    rows = batch.copy_rows
    if isinstance(rows, CopyRows):
        if [row[0] for row in rows.rows] != [r.report_id for r in batch.reports]:
            problems.append("COPY rows are not the batch's reports in order")
        if rows.text != copy_text(rows.rows):
            problems.append(
                f"COPY text is not the text of its rows (text {'set' if rows.text else None})"
            )
    elif isinstance(rows, list):
        if [row[0] for row in rows] != [r.report_id for r in batch.reports]:
            problems.append("bulk rows are not the batch's reports in order")
    return problems


class Rig:
    """A journal, a watched sink and a drainer of them."""

    def __init__(
        self,
        url: str,
        journal_dir: Path,
        *,
        batch_records: int = 1000,
        batch_bytes: int = drainer_module.BATCH_BYTES,
        segment_bytes: int = 64 << 20,
        max_bytes: int = 1 << 30,
    ) -> None:
        self.journal = Journal(
            journal_dir, writer=NAME, segment_bytes=segment_bytes, max_bytes=max_bytes
        )
        self.view = GatedJournal(self.journal)
        self.sink = WatchedSink(url, cluster=NAME, journal=NAME)
        self.sink.journal_view = self.view
        self.room = threading.Event()
        self.drainer = Drainer(
            lambda: self.view,  # type: ignore[arg-type,return-value]
            self.sink,
            batch_records=batch_records,
            batch_bytes=batch_bytes,
            metrics=Metrics(),
            on_fenced=lambda exc: None,
            on_room=self.room.set,
            name=NAME,
        )
        self.appended: list[Rec] = []
        self._append_lock = threading.Lock()

    def append(self, records: Sequence[Rec]) -> None:
        with self._append_lock:
            self.journal.append_batch([r.data for r in records])
            self.appended.extend(records)

    def start(self) -> None:
        self.drainer.start(1)

    def wait_drained(self, timeout_s: float = 30) -> None:
        total = len(self.appended)
        wait_until(
            lambda: self.drainer.drained_records >= total or not self.drainer.running,
            timeout_s,
            f"{total} records drained (drained {self.drainer.drained_records})",
        )
        assert self.drainer.running, f"drainer ended: {self.drainer.stopped_because}"

    def close(self) -> None:
        self.view.open_gate()
        self.drainer.stop()
        self.journal.close()
        self.sink.close()

    def check(self, url: str, others: Sequence[Rec] = ()) -> None:
        """The batches stored are the records appended, in order, each once; the database holds
        each report once and each rejected record once, nothing else (but `others`, stored
        before); no batch was malformed."""
        stored_order = [rid for w in self.sink.written for rid in w.ids]
        appended_order = [r.item_id for r in self.appended]
        if stored_order != appended_order:
            pairs = zip(stored_order, appended_order, strict=False)
            first = next(
                (i for i, (a, b) in enumerate(pairs) if a != b),
                min(len(stored_order), len(appended_order)),
            )
            raise AssertionError(
                f"batches stored {len(stored_order)} records, {len(appended_order)} appended;"
                f" first difference at {first}: stored {stored_order[first : first + 3]},"
                f" appended {appended_order[first : first + 3]}"
            )
        assert self.drainer.drained_records == len(self.appended)
        problems = [p for w in self.sink.written for p in w.problems] + self.sink.problems
        assert not problems, problems[:5]
        assert self.view.gate_timeouts == 0, "a read-ahead waited for the test in vain"
        check_database(url, [*others, *self.appended])
        # Every stored position is the end of the journal's segments still on disk.
        positions = self.sink.positions()
        for info in self.journal.segments():
            if info.records:
                assert positions.get(info.name) == info.end, (info.name, positions, info.end)


def check_database(url: str, records: Sequence[Rec]) -> None:
    expected_stored = {r.stored for r in records if r.stored}
    expected_rejected = {r.rejected_id for r in records if r.rejected_id}
    refused = {r.rejected_id for r in records if r.refused}
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            stored = [row[0] for row in conn.execute(select(reports.c.report_id))]
            rejected_rows = conn.execute(
                select(rejected_reports.c.report_id, rejected_reports.c.reason)
            ).all()
    finally:
        engine.dispose()
    doubled = sorted({rid for rid in stored if stored.count(rid) > 1})
    assert not doubled, f"stored twice: {doubled[:5]}"
    missing = sorted(expected_stored - set(stored))
    assert not missing, f"{len(missing)} reports lost, e.g. {missing[:5]}"
    extra = sorted(set(stored) - expected_stored)
    assert not extra, f"stored though they must not be: {extra[:5]}"
    rejected_ids = [row.report_id for row in rejected_rows]
    doubled_rejected = sorted({rid for rid in rejected_ids if rejected_ids.count(rid) > 1})
    assert not doubled_rejected, f"rejected twice: {doubled_rejected[:5]}"
    assert set(rejected_ids) == expected_rejected, (
        sorted(expected_rejected - set(rejected_ids))[:5],
        sorted(set(rejected_ids) - expected_rejected)[:5],
    )
    for row in rejected_rows:
        if row.report_id in refused:
            assert row.reason.startswith("database refused"), (row.report_id, row.reason)


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'reports.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def sqlite_or_pg_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database's URL: SQLite, then the session's PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return request.getfixturevalue("pg_url")


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.integration),
        pytest.param("mariadb", marks=[pytest.mark.integration, pytest.mark.mariadb]),
    ]
)
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "maria_url")


class Feed:
    """The sink's hook that makes every batch a joined one: before each write, the next (A, B) of
    `parts` is appended, A read by the read-ahead, then B (added by the top-up); once every part
    is in, the gate opens. `on_write` runs first at every write; `after_part(n)` once part n is
    in."""

    def __init__(
        self,
        rig: Rig,
        parts: Sequence[tuple[Sequence[Rec], Sequence[Rec]]],
        *,
        on_write: Callable[[], None] | None = None,
        after_part: Callable[[int], None] | None = None,
    ) -> None:
        self.rig = rig
        self.queue = list(parts)
        self.parts = len(self.queue)
        self.fed = 0
        self.on_write = on_write
        self.after_part = after_part
        rig.view.gated = True
        rig.sink.before_write = self

    def __call__(self, _batch: Batch) -> None:
        if self.on_write is not None:
            self.on_write()
        if not self.queue:
            self.rig.view.open_gate()
            return
        a, b = self.queue.pop(0)
        if a:
            self.rig.append(a)
        assert self.rig.view.let_reader_read(), "the read-ahead did not read"
        if b:
            self.rig.append(b)
        if self.after_part is not None:
            self.after_part(self.fed)
        self.fed += 1

    def done(self) -> bool:
        # Counted once a part's B is in: the queue empties when the last part is taken, before
        # it is appended, and a wait for the drain begun then would count too few records.
        return self.fed == self.parts


def run_joined(
    rig: Rig,
    parts: Sequence[tuple[Sequence[Rec], Sequence[Rec]]],
    *,
    first: Sequence[Rec] | None = None,
) -> None:
    """Drains `first` (one batch read by the drainer itself), then each (A, B) of `parts` as one
    batch: A read by the read-ahead, B appended after it read and added by the top-up."""
    feed = Feed(rig, parts)
    rig.append(first or mixed("first", 3, random.Random(0)))
    rig.start()
    wait_until(feed.done, 30, "every part appended")
    rig.wait_drained()


def joined_batches(rig: Rig, parts: Sequence[tuple[Sequence[Rec], Sequence[Rec]]]) -> None:
    """Each (A, B) was stored as one batch A + B, in order (none split, none merged)."""
    written = [w.ids for w in rig.sink.written]
    expected = [[r.item_id for r in (*a, *b)] for a, b in parts]
    assert written[1 : 1 + len(expected)] == expected


# -- 1. every batch topped up: mixed records in both parts -------------------------------------

# Part sizes around the pacing step (20) and across it.
_SIZES = [(1, 1), (19, 1), (20, 20), (21, 19), (1, 40), (40, 1), (39, 41), (0, 7), (7, 0), (3, 60)]


def test_every_batch_topped_up_stores_each_record_once_in_order(
    any_url: str, tmp_path: Path
) -> None:
    """Every batch but the first is a read-ahead part joined with a topped-up part, both mixing
    new and old-format reports of every kind, rejected messages and undecodable bytes: the
    batches stored are exactly the records appended, each report stored once, each rejected
    record once; on PostgreSQL each joined batch keeps COPY text, the text of its rows."""
    rng = random.Random(1)
    parts = [
        (mixed(f"a{n}", a, rng), mixed(f"b{n}", b, rng)) for n, (a, b) in enumerate(_SIZES * 2)
    ]
    rig = Rig(any_url, tmp_path / "journal")
    try:
        run_joined(rig, parts)
        joined_batches(rig, parts)
        rig.check(any_url)
        if rig.sink.copies:
            texts = [w.text for w in rig.sink.written]
            assert all(texts), f"joined batches without COPY text: {texts}"
        # Every top-up after a non-empty read-ahead read in the drainer's thread what B holds.
        topups = [r for r in rig.view.reads if not r["reader"] and r["max_records"] != 1000]
        assert len(topups) >= sum(1 for a, b in parts if a and b)
    finally:
        rig.close()


# -- 2. a value COPY text cannot carry in one part only -----------------------------------------


@pytest.mark.integration
def test_lone_surrogate_in_one_part_makes_the_joined_batch_row_by_row_and_only_it_is_refused(
    pg_url: str, tmp_path: Path
) -> None:
    """A report whose typed column holds a lone surrogate (no COPY text for its part), in the
    read-ahead part, in the topped-up part, first, last, and in both: the joined batch goes
    without text, that report alone is refused (kept in rejected_reports), the rest stored."""
    rng = random.Random(2)

    def s(tag: str) -> Rec:
        return surrogate_report(f"surrogate-{tag}-{uuid.uuid4().hex[:6]}", rng)

    parts = [
        ([*mixed("a0", 10, rng), s("a0")], mixed("b0", 10, rng)),
        (mixed("a1", 10, rng), [s("b1"), *mixed("b1", 25, rng)]),
        ([s("a2")], mixed("b2", 3, rng)),
        (mixed("a3", 21, rng), [s("b3")]),
        ([s("a4"), *mixed("a4", 5, rng)], [*mixed("b4", 5, rng), s("b4")]),
        (mixed("a5", 20, rng), mixed("b5", 20, rng)),  # text again after them
    ]
    rig = Rig(pg_url, tmp_path / "journal")
    try:
        run_joined(rig, parts)
        joined_batches(rig, parts)
        rig.check(pg_url)
        assert [w.text for w in rig.sink.written[1:7]] == [False] * 5 + [True]
    finally:
        rig.close()


# -- 3. a poison in the topped-up part, isolated by bisecting joined rows -----------------------


@pytest.mark.integration
def test_poison_in_a_joined_batch_is_isolated_and_the_rest_of_both_parts_stored(
    pg_url: str, tmp_path: Path
) -> None:
    """Reports the database refuses (a count beyond bigint, a number jsonb cannot hold) in the
    topped-up part, at the seam of the two parts, in both, several at once: the joined batch's
    COPY fails, the sink bisects the joined rows (slices of CopyRows), and each poison lands once
    in rejected_reports with the database's reason; every other record of both parts is
    stored once."""
    rng = random.Random(3)

    def p(tag: str, jsonb: bool = False) -> Rec:
        rid = f"poison-{tag}-{uuid.uuid4().hex[:6]}"
        return poison_jsonb(rid, rng) if jsonb else poison_bigint(rid, rng)

    parts = [
        (mixed("a0", 20, rng), [p("b0"), *mixed("b0", 20, rng)]),  # first of B: the seam
        ([*mixed("a1", 19, rng), p("a1", True)], mixed("b1", 21, rng)),  # last of A: the seam
        (mixed("a2", 33, rng), [*mixed("b2", 7, rng), p("b2", True), *mixed("b2x", 9, rng)]),
        ([p("a3")], [p("b3", True)]),  # nothing but poisons
        ([*mixed("a4", 8, rng), p("a4")], [p("b4"), *mixed("b4", 40, rng), p("b4z", True)]),
        (mixed("a5", 20, rng), mixed("b5", 20, rng)),
    ]
    rig = Rig(pg_url, tmp_path / "journal")
    try:
        run_joined(rig, parts)
        joined_batches(rig, parts)
        rig.check(pg_url)
    finally:
        rig.close()


# -- 4. duplicates: across the parts, twice in one part, stored before --------------------------


def _copy_of(rec: Rec, rng: random.Random, *, old: bool = False) -> Rec:
    """A record of the same report_id with another payload (a resend that differs)."""
    kind = "sq"
    return (old_report if old else new_report)(rec.item_id, kind, rng)


def test_report_id_split_across_the_parts_or_twice_in_one_is_stored_once_the_first_kept(
    sqlite_or_pg_url: str, tmp_path: Path
) -> None:
    """The same report_id in the read-ahead part and the topped-up part, twice in one part, in
    a later batch again, and sent again as an old-format record: stored once, with the first
    copy's payload; the batches after a batch of duplicates (the staged way) store the rest."""
    url = sqlite_or_pg_url
    rng = random.Random(4)
    x, y, z = (new_report(f"dup-{c}-{uuid.uuid4().hex[:6]}", "sq", rng) for c in "xyz")
    x2, y2, z2 = (_copy_of(r, rng) for r in (x, y, z))
    x3 = _copy_of(x, rng, old=True)
    parts = [
        ([*mixed("a0", 5, rng), x], [x2, *mixed("b0", 5, rng)]),  # across the seam
        ([y, *mixed("a1", 20, rng), y2], mixed("b1", 3, rng)),  # twice in A
        (mixed("a2", 3, rng), [z, *mixed("b2", 20, rng), z2]),  # twice in B
        ([x3], [y2, z2]),  # all of them again, in a later batch
        (mixed("a4", 20, rng), mixed("b4", 20, rng)),  # new ones after the staged way
    ]
    rig = Rig(url, tmp_path / "journal")
    try:
        run_joined(rig, parts)
        joined_batches(rig, parts)
        # Exactly-once on everything but the duplicates, which are stored once (checked below).
        firsts = {x.item_id, y.item_id, z.item_id}
        unique = [r for r in rig.appended if r.item_id not in firsts]
        check_database(url, [*unique, x, y, z])
        assert [rid for w in rig.sink.written for rid in w.ids] == [r.item_id for r in rig.appended]
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                payloads = dict(
                    conn.execute(
                        select(reports.c.report_id, reports.c.payload).where(
                            reports.c.report_id.in_(sorted(firsts))
                        )
                    ).all()
                )
        finally:
            engine.dispose()
        for first in (x, y, z):
            payload = payloads[first.item_id]
            payload = json.loads(payload) if isinstance(payload, str) else payload
            assert payload == json.loads(first.data.split(b',"p":', 1)[1][:-1]), first.item_id
        assert rig.drainer.stored == len({r.stored for r in rig.appended if r.stored})
    finally:
        rig.close()


# -- 5. the byte bound in the middle of a paced read ----------------------------------------------


@pytest.mark.parametrize("bound_at", [1, 19, 20, 21, 40, 41])
def test_byte_bound_in_a_paced_read_gives_exactly_the_records_appended_and_closes_the_segment(
    bound_at: int, tmp_path: Path
) -> None:
    """Records of one size, `batch_bytes` such that the bound falls on record `bound_at` (around
    the pacing step of 20 records): each batch is at most the bound, the batches are the
    records in order with none lost nor read twice, and every journal read is closed before the
    records are decoded (the segment it stopped in is closed), in the read-ahead as in the
    top-up."""
    url = sqlite_url(tmp_path)
    rng = random.Random(5)
    # Same-size records: new sq reports with ids of one length and a fixed-width payload.
    records = []
    for i in range(300):
        rid = f"b{i:05d}"
        payload = {"call_id": f"c{i:05d}", "component": "mcp-01", "metric": "mos", "value": 1.5}
        body = json.dumps(payload)
        records.append(
            Rec(to_record(Report(rid, "sq", _queue("sq"), payload, NOW, body)), rid, stored=rid)
        )
    size = len(records[0].data)
    assert all(len(r.data) == size for r in records)
    batch_bytes = size * bound_at + size // 2
    rig = Rig(url, tmp_path / "journal", batch_bytes=batch_bytes)
    try:
        # A backlog first (bound hit by the read-ahead reading a full journal), then a trickle of
        # joined batches whose top-up meets the bound with the bytes left.
        rig.append(records[:150])
        rig.start()
        rig.wait_drained()
        # The read-ahead begun before the backlog's last write must have read before the Feed
        # gates it: counted drained is not enough (a reader slow to start would then wait at
        # the gate for a ticket no write gives). Caught up, the drainer has taken its result.
        assert rig.drainer.wait_caught_up(30), "the drainer did not find the journal drained"
        wake, rest = records[150], records[151:]
        parts = []
        while rest:
            n = rng.randrange(0, bound_at + 2)
            m = rng.randrange(1, bound_at + 2)
            parts.append((rest[:n], rest[n : n + m]))
            rest = rest[n + m :]
        feed = Feed(rig, parts)
        # Wake the idle drainer with a record of its own; it starts the gated cycle.
        rig.append([wake])
        rig.drainer.wake()
        wait_until(feed.done, 30, "every part appended")
        rig.wait_drained()
        for w in rig.sink.written:
            assert len(w.ids) <= max(1, bound_at), (len(w.ids), bound_at)
        rig.check(url)
        assert all(r["closed"] for r in rig.view.reads)
    finally:
        rig.close()


def test_record_larger_than_the_byte_bound_in_the_topped_up_part_is_stored_in_a_batch_of_its_own(
    sqlite_or_pg_url: str, tmp_path: Path
) -> None:
    """A record larger than `batch_bytes` appended after the read-ahead read (first of B, after
    a non-empty and after an empty A, and two in a row): the top-up leaves it, the next batch
    takes it alone; the drain goes on, everything stored once, in order."""
    url = sqlite_or_pg_url
    rng = random.Random(10)

    def huge(tag: str) -> Rec:
        return new_report(f"huge-{tag}-{uuid.uuid4().hex[:6]}", "cdr", rng, notes="n" * 6000)

    parts = [
        (mixed("a0", 5, rng), [huge("b0"), *mixed("b0", 3, rng)]),
        ([], [huge("b1"), *mixed("b1", 2, rng)]),
        (mixed("a2", 2, rng), [huge("b2"), huge("b2x")]),
        ([huge("a3")], mixed("b3", 4, rng)),
        (mixed("a4", 20, rng), mixed("b4", 20, rng)),
    ]
    rig = Rig(url, tmp_path / "journal", batch_bytes=4096)
    try:
        run_joined(rig, parts)
        rig.check(url)
        for w in rig.sink.written:
            if any(rid.startswith("huge-") for rid in w.ids):
                assert len(w.ids) == 1, w.ids
    finally:
        rig.close()


# -- 6. segment rollover inside a batch; segments released while a read-ahead waits -------------


def test_rollover_inside_joined_batches_and_release_during_the_read_ahead_lose_nothing(
    sqlite_or_pg_url: str, tmp_path: Path
) -> None:
    """Segments of a few records, so that both parts of a batch span rollovers and a part
    begins in a new segment; the read-ahead waits until the drainer has released the segments
    the last batch drained (they are deleted under the positions it reads from), then reads,
    then more is appended for the top-up. Everything stored once, segments released, the
    positions at the end of what is left."""
    url = sqlite_or_pg_url
    rng = random.Random(6)
    rig = Rig(url, tmp_path / "journal", segment_bytes=2048)
    parts = [(mixed(f"a{n}", a, rng), mixed(f"b{n}", b, rng)) for n, (a, b) in enumerate(_SIZES)]
    queue = list(parts)
    released: list[str] = []
    pending_b: list[list[Rec]] = []
    # Parts whose B is appended: `queue` and `pending_b` are both empty for a moment after the
    # last part is taken and before its A is appended, and after its B is taken and before it
    # is appended; a drain wait begun then would count too few records.
    fed: list[int] = []

    def before_write(_batch: Batch) -> None:
        # Part A before the release; the read-ahead may read only after it.
        if queue:
            a, b = queue.pop(0)
            if a:
                rig.append(a)
            pending_b.append(list(b))
        else:
            rig.view.open_gate()

    def after_release(names: list[str]) -> None:
        released.extend(names)
        if not pending_b:
            return
        b = pending_b.pop(0)
        assert rig.view.let_reader_read(), "the read-ahead did not read"
        if b:
            rig.append(b)
        fed.append(1)

    try:
        rig.view.gated = True
        rig.view.after_release = after_release
        rig.sink.before_write = before_write
        rig.append(mixed("first", 3, rng))
        rig.start()
        wait_until(lambda: len(fed) == len(parts), 30, "every part appended")
        rig.wait_drained()
        joined_batches(rig, parts)
        rig.check(url)
        assert len(released) > 5, released
        segments = rig.journal.segments()
        assert len(segments) <= 2, [s.name for s in segments]
    finally:
        rig.close()


# -- 7. a steady trickle while the drainer runs ---------------------------------------------------


def topped_up(rig: "Rig") -> list[dict]:
    """The drainer's own reads that topped up a batch the read-ahead had stopped short."""
    return [
        r
        for r in list(rig.view.reads)
        if not r["reader"] and r["entries"] and r["max_records"] != 1000
    ]


def test_steady_trickle_of_mixed_records_is_stored_exactly_once(
    sqlite_or_pg_url: str, tmp_path: Path
) -> None:
    """Small batches of mixed records appended every few milliseconds for a few seconds while
    the drainer runs, no gate: most batches are topped up; every record drained once, in order.
    A second round with a journal so small, and a database so slow, that appends wait for
    room: the newest segment is freed under the read-ahead (the journal's starved release)."""
    url = sqlite_or_pg_url
    earlier: list[Rec] = []
    for round_, max_bytes in enumerate([1 << 30, 24 << 10]):
        rng = random.Random(7 + round_)
        rig = Rig(url, tmp_path / f"journal{round_}", segment_bytes=8192, max_bytes=max_bytes)
        # The same database in both rounds: the second writes under another journal key and
        # fencing domain (a writer of its own, whose first claim of epoch 1 is its own).
        rig.sink.journal = f"{NAME}-{round_}"
        rig.sink.cluster = f"{NAME}-{round_}"
        if round_:
            # A slow database: the appends outrun the drain and wait for room.
            rig.sink.before_write = lambda _batch: time.sleep(0.05)
        try:
            rig.start()
            # At least 2 s, and on until a batch has been topped up (a loaded machine may drain
            # each append whole for a while), within 15 s.
            started = time.monotonic()
            full = 0
            for n in range(20000):
                elapsed = time.monotonic() - started
                if elapsed > 15 or (elapsed > 2.0 and topped_up(rig) and (full or not round_)):
                    break
                records = mixed(f"t{round_}-{n}", rng.randrange(1, 12), rng)
                for _ in range(1000):
                    try:
                        rig.append(records)
                        break
                    except JournalFull:
                        full += 1
                        rig.room.wait(0.05)
                        rig.room.clear()
                else:
                    raise AssertionError("the journal never made room")
                time.sleep(rng.choice([0, 0.001, 0.003]))
            rig.wait_drained()
            rig.check(url, earlier)
            assert topped_up(rig), "no batch was topped up: the trickle did not reach the join"
            if round_:
                assert full, "the small journal never filled"
            earlier += rig.appended
        finally:
            rig.close()


# -- 8. statement timeout after a joined batch ----------------------------------------------------


@pytest.mark.integration
def test_joined_batch_that_meets_the_statement_timeout_is_split_and_stored_once(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement storing more than 15 reports sleeps past a statement timeout of 1 s; each
    joined batch holds 30 to 40: it meets the timeout, the drainer splits it, the read-ahead
    is dropped and read again, batches grow back (every 3 stored) and are joined again. Every
    record stored once, in order, none refused, the database never taken for down."""
    monkeypatch.setattr(engine_module, "STATEMENT_TIMEOUT_S", 1)
    monkeypatch.setattr(drainer_module, "GROW_AFTER_BATCHES", 3)
    rng = random.Random(8)
    parts = [(mixed(f"a{n}", 20, rng), mixed(f"b{n}", 10 + n, rng)) for n in range(8)]
    rig = Rig(pg_url, tmp_path / "journal")
    rig.sink.upgrade()
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        slow_when_many(conn, rows=15, seconds=2)
    engine.dispose()
    down: list[bool] = []
    try:
        feed = Feed(rig, parts, on_write=lambda: down.append(rig.drainer.database_up is False))
        rig.append(mixed("first", 3, rng))
        rig.start()
        wait_until(feed.done, 60, "every part appended")
        rig.wait_drained(60)
        rig.check(pg_url)
        assert rig.sink.attempts > len(rig.sink.written), "no batch met the timeout"
        assert not any(down), "a statement timeout was taken for an outage"
    finally:
        rig.close()


# -- 9. the database killed during a joined batch -------------------------------------------------


@pytest.mark.integration
def test_database_killed_during_a_joined_batch_stores_it_once_after_the_restart(
    postgres: Any, pg_url: str, tmp_path: Path
) -> None:
    """While a joined batch (with COPY text) is in its COPY, held there by a trigger that sleeps,
    PostgreSQL is killed; then again a joined batch goes in while it is down. The drainer
    retries the same batch after the restart: every record stored once, in order."""
    rng = random.Random(9)
    parts = [(mixed(f"a{n}", 15, rng), mixed(f"b{n}", 15, rng)) for n in range(6)]
    rig = Rig(pg_url, tmp_path / "journal")
    rig.sink.upgrade()
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                CREATE TABLE slow (on_ boolean NOT NULL);
                INSERT INTO slow VALUES (false);
                CREATE FUNCTION slow_copy() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF (SELECT on_ FROM slow) THEN PERFORM pg_sleep(3); END IF;
                    RETURN NULL;
                END $$;
                CREATE TRIGGER slow_copy AFTER INSERT ON reports
                FOR EACH STATEMENT EXECUTE FUNCTION slow_copy();
                """
            )
        )
    engine.dispose()
    killer: list[threading.Thread] = []

    def set_slow(on: bool) -> None:
        eng = create_engine(pg_url)
        try:
            with eng.begin() as conn:
                conn.execute(text("UPDATE slow SET on_ = :on"), {"on": on})
        finally:
            eng.dispose()

    def in_the_trigger() -> bool:
        eng = create_engine(pg_url)
        try:
            with eng.connect() as conn:
                query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                return bool(conn.execute(text(query)).scalar())
        finally:
            eng.dispose()

    def kill_then_restart() -> None:
        wait_until(in_the_trigger, 10, "the joined batch's COPY in its sleeping trigger")
        postgres.kill()
        time.sleep(1.0)  # down for a second: the retries meet a database that is not there
        postgres.restart()

    def after_part(n: int) -> None:
        if n == 2:  # batch 3 (the joined a1+b1) is about to go in: slow it, kill meanwhile
            set_slow(True)
            thread = threading.Thread(target=kill_then_restart, daemon=True)
            killer.append(thread)
            thread.start()
        if n == 3:
            set_slow(False)

    try:
        feed = Feed(rig, parts, after_part=after_part)
        rig.append(mixed("first", 3, rng))
        rig.start()
        wait_until(feed.done, 90, "every part appended")
        rig.wait_drained(90)
        for thread in killer:
            thread.join(60)
        rig.check(pg_url)
        assert rig.sink.tries > rig.sink.attempts, "no batch was tried again after the kill"
    finally:
        rig.close()


# -- 10. through the running server ----------------------------------------------------------------


@pytest.mark.integration
def test_server_under_a_steady_flow_stores_every_report_once(
    standalone: Any, activemq: Any, pg_url: str, flow_to: Any
) -> None:
    """A standalone server on PostgreSQL takes a steady flow of reports (about 400 a second for
    about four seconds), so that its drainer's batches are mostly topped up: every receipted
    report stored once, the journal drained."""
    server = standalone()
    server.start()
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    flow = flow_to([activemq.host], count=1600, rate=400).start()
    ids = flow.join()
    assert len(ids) == 1600
    assert_exactly_once(pg_url, ids, timeout_s=60)
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 30, "the journal to drain")
