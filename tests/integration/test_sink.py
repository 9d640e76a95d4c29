"""The database sink against real PostgreSQL (harness) and SQLite: exactly once, fenced, no loss."""

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import select

from reporting.harness import MariaDB, Postgres
from reporting.harness.waiting import holds_within, wait_until
from storage.database import Sink, insert
from storage.database import engine as engine_module
from storage.database.schema import fence, rejected_reports, reports
from storage.errors import DatabaseUnavailable, PositionsLost, StaleEpoch
from storage.reports import MAX_TEXT_CHARS, Rejected, Report, from_record

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def cdr(report_id: str, **fields: object) -> Report:
    payload = {
        "call_id": f"call-{report_id}",
        "component": "mcp-1",
        "tenant": "t1",
        "ivr_profile": "default",
        "start": "2024-05-01T12:00:00+02:00",
        "end": "2024-05-01T12:01:30+02:00",
        **fields,
    }
    return Report(report_id, "cdr", "gvp.reporting.cdr", payload, AT)


@pytest.fixture
def sink(url: str) -> Iterator[Sink]:
    sink = Sink(url, cluster="/test/pair", journal="rs-a")
    sink.upgrade()
    yield sink
    sink.close()


def test_migrations_run_from_empty_and_twice(url: str) -> None:
    sink = Sink(url, cluster="c", journal="j")
    try:
        sink.upgrade()
        sink.upgrade()
        assert sink.count_reports() == 0
        assert sink.count_rejected() == 0
        assert sink.positions() == {}
        assert sink.fence_epoch() is None
    finally:
        sink.close()


def test_same_batch_twice_is_stored_once(sink: Sink) -> None:
    batch = [cdr(f"r{i}") for i in range(50)] + [
        Rejected("bad-1", "gvp.reporting.cdr", "not JSON", b"{oops", AT)
    ]
    first = sink.write_batch(batch, positions={"00000001": 4096}, epoch=1)
    again = sink.write_batch(batch, positions={"00000001": 4096}, epoch=1)

    assert (first.stored, first.duplicates, first.rejected) == (50, 0, 1)
    assert (again.stored, again.duplicates, again.rejected) == (0, 51, 0)
    assert sink.count_reports() == 50
    assert sink.count_rejected() == 1
    assert sink.positions() == {"00000001": 4096}
    assert sink.report_id_counts(["r0", "r49", "missing"]) == {"r0": 1, "r49": 1, "missing": 0}


def test_batches_after_one_with_duplicates_store_only_new_reports(
    sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL a batch with a stored id fails its COPY and goes the staged way, and so
    # does the batch after it (duplicates come in runs); one without then resets that.
    staged: list[int] = []
    copy_staged = insert._copy_staged
    monkeypatch.setattr(
        insert,
        "_copy_staged",
        lambda driver, rows: staged.append(len(rows)) or copy_staged(driver, rows),
    )
    first = sink.write_batch([cdr(f"a{i}") for i in range(5)], positions={}, epoch=1)
    mixed = sink.write_batch([cdr("a2"), cdr("b1"), cdr("b1"), cdr("b2")], positions={}, epoch=1)
    new = sink.write_batch([cdr("c1"), cdr("c2")], positions={}, epoch=1)
    again = sink.write_batch([cdr("d1"), cdr("a0")], positions={}, epoch=1)
    fresh = sink.write_batch([cdr("e1")], positions={}, epoch=1)

    assert (first.stored, first.duplicates) == (5, 0)
    assert (mixed.stored, mixed.duplicates) == (2, 2)
    assert (new.stored, new.duplicates) == (2, 0)
    assert (again.stored, again.duplicates) == (1, 1)
    assert (fresh.stored, fresh.duplicates) == (1, 0)
    assert sink.count_reports() == 11
    assert sink.count_rejected() == 0
    if sink.url.startswith("postgresql"):
        assert staged == [4, 2, 2, 1]  # mixed, new, again (after its COPY failed), fresh


def test_duplicate_report_id_within_one_batch_is_stored_once(sink: Sink) -> None:
    result = sink.write_batch([cdr("same"), cdr("same")], positions={}, epoch=1)
    assert (result.stored, result.duplicates) == (1, 1)
    assert sink.count_reports() == 1


def test_ids_and_names_that_differ_only_in_case_accent_or_trailing_space_are_apart(
    url: str, sink: Sink
) -> None:
    # MariaDB's default collations take these for one value; a report would be lost as stored.
    ids = ["ABC", "abc", "abc ", "\u00e1bc", "a\u0301bc"]
    result = sink.write_batch([cdr(i) for i in ids], positions={"Seg": 1, "seg": 2}, epoch=1)
    assert (result.stored, result.duplicates) == (5, 0)
    assert sink.report_id_counts(ids) == dict.fromkeys(ids, 1)
    assert sink.positions() == {"Seg": 1, "seg": 2}
    # Fencing domains and journals that differ in case are others too.
    other = Sink(url, cluster=sink.cluster.upper(), journal=sink.journal.upper())
    try:
        other.write_batch([cdr("other")], positions={"Seg": 9}, epoch=0)
        assert other.positions() == {"Seg": 9}
        assert sink.positions() == {"Seg": 1, "seg": 2}
    finally:
        other.close()


def test_typed_columns_are_parsed_tolerantly(sink: Sink) -> None:
    good = cdr("good")
    odd = cdr("odd", start="yesterday", call_id=42)
    sink.write_batch([good, odd], positions={}, epoch=1)
    with sink._engine.connect() as conn:
        rows = {
            row.report_id: row
            for row in conn.execute(
                select(reports.c.report_id, reports.c.call_id, reports.c.started_at)
            )
        }
    assert rows["good"].call_id == "call-good"
    assert rows["good"].started_at.replace(tzinfo=UTC) == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert rows["odd"].call_id is None
    assert rows["odd"].started_at is None


def test_stale_epoch_is_refused_and_stores_nothing(sink: Sink) -> None:
    sink.claim_epoch(5)
    sink.write_batch([cdr("new")], positions={"00000002": 10}, epoch=5)

    with pytest.raises(StaleEpoch) as raised:
        sink.write_batch([cdr("old-1"), cdr("old-2")], positions={"00000002": 99}, epoch=4)

    assert raised.value.epoch == 4
    assert sink.count_reports() == 1
    assert sink.report_id_counts(["old-1", "old-2"]) == {"old-1": 0, "old-2": 0}
    assert sink.positions() == {"00000002": 10}
    assert sink.fence_epoch() == 5


def test_positions_behind_what_was_committed_store_nothing(sink: Sink) -> None:
    # A database that lost commits (a restore, an asynchronous standby promoted) is found by the
    # batch's first statement: the positions stored are older than those the drainer committed.
    sink.write_batch([cdr("a")], positions={"00000001": 100, "00000002": 5}, epoch=1)
    with pytest.raises(PositionsLost) as raised:
        sink.write_batch(
            [cdr("b")],
            positions={"00000001": 300},
            epoch=2,
            committed={"00000001": 200, "00000002": 5},
        )
    assert (raised.value.segment, raised.value.stored, raised.value.committed) == (
        "00000001",
        100,
        200,
    )
    assert sink.report_id_counts(["b"]) == {"b": 0}
    assert sink.positions() == {"00000001": 100, "00000002": 5}
    assert sink.fence_epoch() == 1
    # Where the stored positions are what was committed, the same batch goes in.
    sink.write_batch([cdr("b")], positions={"00000001": 300}, epoch=2, committed={"00000001": 100})
    assert sink.positions() == {"00000001": 300, "00000002": 5}
    assert sink.report_id_counts(["b"]) == {"b": 1}


def test_claim_epoch_moves_forward_only(sink: Sink) -> None:
    sink.claim_epoch(3)
    sink.claim_epoch(3)
    sink.claim_epoch(7)
    with pytest.raises(StaleEpoch):
        sink.claim_epoch(6)
    assert sink.fence_epoch() == 7


def test_fence_is_per_cluster(url: str, sink: Sink) -> None:
    other = Sink(url, cluster="/test/other-pair", journal="rs-c")
    try:
        sink.claim_epoch(9)
        other.write_batch([cdr("other")], positions={}, epoch=1)
        assert other.fence_epoch() == 1
    finally:
        other.close()


def test_positions_are_per_journal(url: str, sink: Sink) -> None:
    other = Sink(url, cluster="/test/pair", journal="rs-b")
    try:
        sink.write_batch([cdr("a")], positions={"00000001": 100, "00000002": 7}, epoch=1)
        other.write_batch([cdr("b")], positions={"00000001": 55}, epoch=1)
        sink.write_batch([cdr("c")], positions={"00000002": 80}, epoch=1)
        assert sink.positions() == {"00000001": 100, "00000002": 80}
        assert other.positions() == {"00000001": 55}
    finally:
        other.close()


def test_rows_the_database_refuses_are_kept_as_rejected(url: str, sink: Sink) -> None:
    bad = {
        "huge": cdr("huge", arrivals=2**70),  # beyond bigint
        "nan": cdr("nan", ivr_profile=float("nan")),  # not JSON (PostgreSQL refuses)
        "nul-json": cdr("nul-json", ivr_profile="a\x00b"),  # \u0000 in jsonb
        "nul-text": cdr("nul-text", call_id="x\x00y"),  # NUL in a text column
    }
    good = [cdr(f"ok-{i}") for i in range(20)]
    batch = good[:10] + list(bad.values()) + good[10:]

    result = sink.write_batch(batch, positions={"00000003": 512}, epoch=1)
    refused = set(_rejected(sink))
    # SQLite stores NaN and NUL as they are; only the integer beyond 64 bits is refused there.
    # MariaDB keeps NUL in text and JSON (as \u0000) but checks that a payload is JSON.
    expected = set(bad) if url.startswith("postgresql") else {"huge"}
    if url.startswith("mysql"):
        expected = {"huge", "nan"}

    assert refused == expected
    assert result.stored == len(batch) - len(expected)
    assert result.rejected == len(expected)
    assert sink.report_id_counts(r.report_id for r in good) == {r.report_id: 1 for r in good}
    assert sink.positions() == {"00000003": 512}
    # The raw record is the journal record, so the report can be recovered from it.
    for report_id, (reason, raw) in _rejected(sink).items():
        assert reason.startswith("database refused:")
        assert from_record(raw).report_id == report_id

    again = sink.write_batch(batch, positions={"00000003": 512}, epoch=1)
    assert (again.stored, again.rejected, again.duplicates) == (0, 0, len(batch))
    assert sink.count_rejected() == len(expected)


def test_rows_no_retry_could_fix_are_rejected_and_the_rest_of_the_batch_stored(
    url: str, sink: Sink
) -> None:
    # Built here, past decode's bounds, so that the database itself refuses them: an id too
    # large for its index row (a program limit, SQLSTATE 54000, which was once taken for an
    # outage and retried for ever), a number jsonb cannot hold (22003), text no encoding takes.
    long_id = random.Random(14).randbytes(4096).hex()
    bad = {
        long_id: cdr(long_id),
        "numeric": Report("numeric", "sq", "gvp.reporting.sq", {}, AT, '{"value": 1e-20000}'),
        "surrogate": cdr("surrogate", call_id="\ud800x"),
    }
    # A typed text copy past its bound is stored as NULL (the payload keeps it): not refused.
    good = [cdr(f"ok-{i}") for i in range(29)] + [cdr("long-call-id", call_id=long_id)]
    batch = [*good[:10], bad[long_id], *good[10:20], bad["numeric"], bad["surrogate"], *good[20:]]

    result = sink.write_batch(batch, positions={"00000004": 900}, epoch=1)
    # SQLite has no index row limit and keeps the payload it is given. MariaDB refuses the id
    # longer than its column; its JSON is text, which keeps any number that parses.
    expected = set(bad) if url.startswith("postgresql") else {"surrogate"}
    if url.startswith("mysql"):
        expected = {long_id, "surrogate"}

    assert result.stored == len(batch) - len(expected)
    assert result.rejected == result.refused == len(expected)
    assert sink.report_id_counts(r.report_id for r in good) == {r.report_id: 1 for r in good}
    assert sink.positions() == {"00000004": 900}
    rejected = _rejected(sink)
    # The rejected row's id is cut to fit its own index; its raw record keeps the whole id.
    assert set(rejected) == {i[:MAX_TEXT_CHARS] for i in expected}
    for report_id, (reason, raw) in rejected.items():
        assert reason.startswith("database refused:"), reason
        if report_id != "surrogate":
            assert from_record(raw).report_id.startswith(report_id)
    with sink._engine.connect() as conn:
        call_id = select(reports.c.call_id).where(reports.c.report_id == "long-call-id")
        assert conn.scalar(call_id) is None
    if url.startswith("postgresql"):
        assert rejected[long_id[:MAX_TEXT_CHARS]][0].endswith("(SQLSTATE 54000)")
        assert rejected["numeric"][0].endswith("(SQLSTATE 22003)")
    if url.startswith("mysql"):
        assert "1406" in rejected[long_id[:MAX_TEXT_CHARS]][0]  # data too long for column

    again = sink.write_batch(batch, positions={"00000004": 900}, epoch=1)
    assert (again.stored, again.rejected, again.refused, again.duplicates) == (0, 0, 0, len(batch))
    assert sink.count_rejected() == len(expected)


def test_rejected_with_nul_in_its_id_is_stored_once(sink: Sink) -> None:
    item = Rejected("id\x00x", "gvp.reporting.sq", "missing field", b"\x00\xff", AT)
    assert sink.write_batch([item], positions={}, epoch=1).rejected == 1
    assert sink.write_batch([item], positions={}, epoch=1).duplicates == 1
    assert _rejected(sink) == {"id\\x00x": ("missing field", b"\x00\xff")}


def test_probe(sink: Sink, tmp_path: Path) -> None:
    assert sink.probe() is True
    down = Sink("postgresql+psycopg://nobody@127.0.0.1:1/none", cluster="c", journal="j")
    assert down.probe() is False
    with pytest.raises(DatabaseUnavailable):
        down.write_batch([cdr("x")], positions={}, epoch=1)
    down.close()


def _rejected(sink: Sink) -> dict[str, tuple[str, bytes]]:
    query = select(rejected_reports.c.report_id, rejected_reports.c.reason, rejected_reports.c.raw)
    with sink._engine.connect() as conn:
        return {row.report_id: (row.reason, bytes(row.raw)) for row in conn.execute(query)}


# -- the servers (PostgreSQL, MariaDB: `server_url`) ------------------------------------------


@pytest.mark.integration
def test_batches_are_written_at_read_committed(server_url: str) -> None:
    # What the fence's locking read and the gap-lock-free unique inserts rely on (README,
    # Database): a batch's own transaction, seen from inside it.
    sink = Sink(server_url, cluster="c", journal="j")
    sink.upgrade()
    seen: list[str] = []
    open_batch = sink._open_batch

    def opening(conn, *args) -> None:
        seen.append(conn.get_isolation_level())
        open_batch(conn, *args)

    sink._open_batch = opening  # type: ignore[method-assign]
    try:
        sink.write_batch([cdr("a")], positions={"s": 1}, epoch=1)
    finally:
        sink.close()
    assert seen == ["READ COMMITTED"]


@pytest.mark.integration
def test_upgrade_from_two_processes_at_once(server_url: str) -> None:
    pg_url = server_url
    sinks = [Sink(pg_url, cluster="c", journal=f"j{i}") for i in range(2)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def upgrade(sink: Sink) -> None:
        barrier.wait()
        try:
            sink.upgrade()
        except BaseException as error:  # collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=upgrade, args=(s,)) for s in sinks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sinks[0].count_reports() == 0
    for sink in sinks:
        sink.close()


@pytest.mark.integration
def test_stale_writer_waits_for_the_fence_then_is_refused(server_url: str) -> None:
    pg_url = server_url
    new, old = (Sink(pg_url, cluster="/pair", journal=n) for n in ("rs-b", "rs-a"))
    new.upgrade()
    old.claim_epoch(1)
    try:
        # The newer writer holds the fence row in an open transaction; the old one must wait
        # for it and then see the newer epoch, not slip in beside it.
        with new._engine.begin() as conn:
            new._check_fence(conn, 2)
            writer = Write(old, [cdr("late")], positions={}, epoch=1).waiting()
        assert isinstance(writer.outcome(), StaleEpoch)
        assert old.report_id_counts(["late"]) == {"late": 0}
    finally:
        new.close()
        old.close()


@pytest.mark.integration
def test_a_stale_writer_locks_no_position_before_the_fence(server_url: str) -> None:
    # Every writer of a journal takes the fence row first, then its positions rows. A stale
    # writer that locked a position first would wait on the fence while holding it, and the
    # fence's holder, storing that position, would wait on it: a deadlock, one batch lost to it.
    new, old = (Sink(server_url, cluster="/pair", journal="shared") for _ in range(2))
    new.upgrade()
    old.write_batch([cdr("first")], positions={"s": 1}, epoch=1)
    try:
        with new._engine.begin() as conn:
            new._open_batch(conn, 2, {"s": 2}, {})
            writer = Write(old, [cdr("late")], positions={"t": 9}, epoch=1).waiting()
            # The holder stores a position the stale writer named: it must not wait.
            new._dialect.store_positions(conn, "shared", {"t": 3})
        assert isinstance(writer.outcome(), StaleEpoch)
        assert new.positions() == {"s": 2, "t": 3}
        assert new.report_id_counts(["late"]) == {"late": 0}
    finally:
        new.close()
        old.close()


def attempt_write(sink: Sink, items: list[Report], **write: Any) -> BaseException | None:
    """`sink.write_batch(items, **write)`: None, or what it raised."""
    try:
        sink.write_batch(items, **write)
    except BaseException as error:  # returned to the test thread
        return error
    return None


def lock_waits(url: str) -> int:
    """Transactions of the database server of `url` waiting for a row lock now."""
    if url.startswith("postgresql"):
        query = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    else:
        query = "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text(query)).scalar_one())
    finally:
        engine.dispose()


def waits_on_a_row_lock(url: str, writer: threading.Thread) -> None:
    """Until `writer` waits on a row lock in the database server of `url` (or ends, which fails).
    Polled for, not given a fixed half second: a loaded machine may take longer than that to
    get the writer to its statement. Not polled more often than every 0.2 s: InnoDB refreshes
    what innodb_trx shows only when it was last read more than 0.1 s ago, so faster polls read
    one stale snapshot (no wait) until the holder's transaction ends by its idle timeout."""
    holds_within(lambda: lock_waits(url) > 0 or not writer.is_alive(), 30, every_s=0.2)
    assert writer.is_alive(), "the writer ended without waiting on a row lock"
    assert lock_waits(url) > 0, "the writer is not waiting on a row lock"


class Write(threading.Thread):
    """`attempt_write` in a thread of its own."""

    def __init__(self, sink: Sink, items: list[Report], **write: Any) -> None:
        super().__init__(daemon=True)
        self._write = (sink, items, write)
        self._outcome: list[BaseException | None] = []

    def run(self) -> None:
        sink, items, write = self._write
        self._outcome.append(attempt_write(sink, items, **write))

    def waiting(self) -> "Write":
        """Started, and waiting on a row lock (one the caller's open transaction holds)."""
        self.start()
        waits_on_a_row_lock(self._write[0].url, self)
        return self

    def outcome(self, timeout_s: float = 30) -> BaseException | None:
        self.join(timeout_s)
        assert self._outcome, "the writer did not end"
        return self._outcome[0]


def test_a_first_claim_of_an_epoch_the_fence_holds_is_refused(url: str) -> None:
    # Two writers never hold one epoch: one whose counter was started again (its ZooKeeper
    # lost its data) is refused on claiming the epoch another holds, and told where the fence
    # is. The writer that claimed it claims it again, and writes under it.
    holder = Sink(url, cluster="/pair", journal="rs-a")
    other = Sink(url, cluster="/pair", journal="rs-b")
    try:
        holder.upgrade()
        holder.claim_epoch(1, first=True)  # the domain's first writer
        with pytest.raises(StaleEpoch) as refused:
            other.claim_epoch(1, first=True)
        assert refused.value.fence == 1 and "(the fence is at 1)" in str(refused.value)
        holder.claim_epoch(1)
        holder.write_batch([cdr("a")], positions={"s": 10}, epoch=1)
        other.claim_epoch(2, first=True)
        with pytest.raises(StaleEpoch):
            holder.write_batch([cdr("late")], positions={"s": 20}, epoch=1)
        assert other.fence_epoch() == 2
    finally:
        holder.close()
        other.close()


@pytest.mark.integration
def test_fence_cannot_be_lowered_even_by_hand(server_url: str) -> None:
    # Migration 0002's trigger: not even an UPDATE outside the sink takes the fence back.
    sink = Sink(server_url, cluster="/pair", journal="rs-a")
    try:
        sink.upgrade()
        sink.claim_epoch(4)
        with pytest.raises(sqlalchemy.exc.DBAPIError), sink._engine.begin() as conn:
            conn.execute(sqlalchemy.update(fence).values(epoch=3))
        assert sink.fence_epoch() == 4
    finally:
        sink.close()


@pytest.mark.integration
@pytest.mark.timeout(240)
@pytest.mark.parametrize("server_class", [Postgres, MariaDB], ids=["postgresql", "mariadb"])
def test_database_killed_during_a_stream_of_batches(tmp_path: Path, server_class: type) -> None:
    # Its own server, so killing it cannot disturb other tests.
    pg = server_class(tmp_path / "db")
    pg.start()
    sink = Sink(pg.create_database("kill"), cluster="/pair", journal="rs-a")
    stop = threading.Event()
    try:
        sink.upgrade()
        retries: list[int] = []
        batches = 40
        batch_records = 200
        killed = threading.Event()
        done_batches: list[int] = []

        def write_stream() -> None:
            for number in range(batches):
                batch = [cdr(f"b{number:03d}-{i:04d}") for i in range(batch_records)]
                sink.write_batch_retrying(
                    batch,
                    positions={"00000001": (number + 1) * 1000},
                    epoch=1,
                    stop=stop,
                    on_retry=lambda attempt, _error: retries.append(attempt),
                )
                done_batches.append(number)
                if number == batches // 3:
                    killed.wait(timeout=60)

        writer = threading.Thread(target=write_stream)
        writer.start()
        # Kill it while the writer is mid-stream, twice: once at a batch boundary the writer
        # is waiting on, once while batches are flowing.
        wait_until(
            lambda: len(done_batches) > batches // 3, 60, "a third of the batches", every_s=0.01
        )
        pg.kill()
        killed.set()
        wait_until(lambda: len(retries) >= 1, 60, "a retry", every_s=0.01)
        pg.restart()
        wait_until(lambda: len(done_batches) > batches // 2, 60, "half the batches", every_s=0.01)
        pg.kill()
        pg.restart()
        writer.join(timeout=180)
        stop.set()
        assert not writer.is_alive()

        assert len(done_batches) == batches
        assert retries, "the writer never saw the database go away"
        assert sink.probe()
        assert sink.count_reports() == batches * batch_records
        ids = [f"b{n:03d}-{i:04d}" for n in range(batches) for i in range(batch_records)]
        assert set(sink.report_id_counts(ids).values()) == {1}
        assert sink.positions() == {"00000001": batches * 1000}
    finally:
        stop.set()  # a failed assertion must not leave the writer retrying for ever
        sink.close()
        pg.stop()


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("server_class", [Postgres, MariaDB], ids=["postgresql", "mariadb"])
def test_a_pooled_connection_the_database_dropped_is_replaced(
    tmp_path: Path, server_class: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A connection used a moment ago is not pinged before its next batch: when the database
    # was restarted within that moment, the batch's first statement fails and it is retried.
    # One idle longer is pinged, found dead and replaced before the batch, with no retry.
    server = server_class(tmp_path / "db")
    server.start()
    sink = Sink(server.create_database("drop"), cluster="/pair", journal="rs-a")
    stop = threading.Event()
    retries: list[int] = []

    def write(number: int) -> None:
        sink.write_batch_retrying(
            [cdr(f"drop-{number}")],
            positions={"00000001": number},
            epoch=1,
            stop=stop,
            on_retry=lambda attempt, _error: retries.append(attempt),
        )

    try:
        sink.upgrade()
        write(1)
        monkeypatch.setattr(engine_module, "PING_IDLE_S", 3600.0)
        server.kill()
        server.restart()
        write(2)
        assert retries, "the dead connection's batch was not retried"
        retried = len(retries)
        monkeypatch.setattr(engine_module, "PING_IDLE_S", 0.0)
        server.kill()
        server.restart()
        write(3)
        assert len(retries) == retried, "the ping did not replace the dead connection"
        assert sink.count_reports() == 3
        assert sink.positions() == {"00000001": 3}
    finally:
        stop.set()
        sink.close()
        server.stop()
