"""Attacks on a batch's opening statement (fence claim, positions check, positions), through the
sink's public interface, on SQLite, PostgreSQL and MariaDB: a stale writer's positions must never
get through, PositionsLost stores nothing, the fence never goes down, exactly-once by report_id."""

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reporting.harness import Postgres
from reporting.harness.waiting import wait_until
from storage.database import Sink
from storage.errors import DatabaseUnavailable, PositionsLost, StaleEpoch
from storage.reports import Report
from tests.integration.test_sink import Write, attempt_write, cdr, waits_on_a_row_lock

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BIG = 2**63 - 1
SMALL = -(2**63)


@pytest.fixture
def sink(url: str) -> Iterator[Sink]:
    sink = Sink(url, cluster="/attack/pair", journal="rs-a")
    sink.upgrade()
    yield sink
    sink.close()


ODD_NAMES = [
    "NULL",
    "null",
    "Null",
    "",
    " ",
    "a,b",
    "{x}",
    '"q"',
    "back\\slash",
    "ünï-çødé",
    "tab\tx",
    "new\nline",
    "semi;colon",
    "'quote'",
    "$1",
    ":journal",
    "%s",
    "Seg",
    "seg",
    "seg ",
    "x" * 255,
]


def test_odd_segment_names_are_stored_and_checked_exactly(sink: Sink) -> None:
    positions = {name: i + 1 for i, name in enumerate(ODD_NAMES)}
    sink.write_batch([cdr("a")], positions=positions, epoch=1)
    assert sink.positions() == positions
    # Every odd name checked against what was stored: all equal, so the batch goes in.
    moved = {name: byte + 100 for name, byte in positions.items()}
    sink.write_batch([cdr("b")], positions=moved, epoch=1, committed=positions)
    assert sink.positions() == moved
    # One of them behind: PositionsLost names that segment, nothing stored.
    for name in ("NULL", "", "a,b", "seg ", "back\\slash"):
        ahead = dict(moved)
        ahead[name] = moved[name] + 1
        with pytest.raises(PositionsLost) as raised:
            sink.write_batch(
                [cdr(f"lost-{ODD_NAMES.index(name)}")],
                positions={n: b + 1000 for n, b in moved.items()},
                epoch=1,
                committed=ahead,
            )
        assert raised.value.segment == name
        assert raised.value.stored == moved[name]
        assert sink.positions() == moved
    assert sink.count_reports() == 2


def test_empty_positions_and_empty_committed(sink: Sink) -> None:
    sink.write_batch([cdr("a")], positions={}, epoch=1)
    assert sink.positions() == {}
    sink.write_batch([cdr("b")], positions={}, epoch=1, committed={})
    sink.write_batch([], positions={}, epoch=2, committed={})
    assert sink.fence_epoch() == 2
    # An empty batch with positions only moves the positions.
    sink.write_batch([], positions={"s": 5}, epoch=2, committed={})
    assert sink.positions() == {"s": 5}
    # Empty positions, a committed check that holds.
    sink.write_batch([cdr("c")], positions={}, epoch=2, committed={"s": 5})
    # Empty positions, a committed check that fails: nothing stored.
    with pytest.raises(PositionsLost):
        sink.write_batch([cdr("d")], positions={}, epoch=3, committed={"s": 6})
    assert sink.fence_epoch() == 2
    assert sink.report_id_counts(["a", "b", "c", "d"]) == {"a": 1, "b": 1, "c": 1, "d": 0}
    assert sink.positions() == {"s": 5}


def test_committed_segments_absent_from_the_database(sink: Sink) -> None:
    sink.write_batch([cdr("a")], positions={"s1": 10}, epoch=1)
    # A committed position of 0 for a segment with no row holds (nothing was drained of it).
    sink.write_batch([cdr("b")], positions={"s2": 1}, epoch=1, committed={"s9": 0, "s1": 10})
    assert sink.positions() == {"s1": 10, "s2": 1}
    # A positions row that was never written, but committed past 0: lost.
    with pytest.raises(PositionsLost) as raised:
        sink.write_batch(
            [cdr("c")], positions={"s9": 50, "s1": 20}, epoch=4, committed={"s9": 1, "s1": 10}
        )
    assert (raised.value.segment, raised.value.stored, raised.value.committed) == ("s9", 0, 1)
    assert sink.positions() == {"s1": 10, "s2": 1}
    assert sink.fence_epoch() == 1
    assert sink.report_id_counts(["c"]) == {"c": 0}


def test_the_check_reads_positions_as_they_were_before_the_batch(sink: Sink) -> None:
    # The batch's own new positions of a checked segment must not pass for stored ones.
    sink.write_batch([], positions={"s": 100}, epoch=1)
    with pytest.raises(PositionsLost) as raised:
        sink.write_batch([cdr("x")], positions={"s": 500}, epoch=1, committed={"s": 200})
    assert (raised.value.stored, raised.value.committed) == (100, 200)
    assert sink.positions() == {"s": 100}
    # A segment first named in this very batch, committed by us before: lost (no row).
    with pytest.raises(PositionsLost):
        sink.write_batch([cdr("x")], positions={"new": 500}, epoch=1, committed={"new": 500})
    assert sink.positions() == {"s": 100}
    assert sink.count_reports() == 0


def test_positions_may_move_back_by_the_fence_holder(sink: Sink) -> None:
    # Positions are set, not maxed: a rewound holder stores the position it reached.
    sink.write_batch([], positions={"s": 100}, epoch=1)
    sink.write_batch([], positions={"s": 50}, epoch=1, committed={"s": 100})
    assert sink.positions() == {"s": 50}


def test_epochs_at_the_bigint_limits(sink: Sink) -> None:
    sink.write_batch([cdr("a")], positions={"s": 1}, epoch=SMALL)
    assert sink.fence_epoch() == SMALL
    sink.write_batch([cdr("b")], positions={"s": 2}, epoch=0, committed={"s": 1})
    sink.write_batch([cdr("c")], positions={"s": 3}, epoch=2**31, committed={"s": 2})
    sink.write_batch([cdr("d")], positions={"s": 4}, epoch=BIG - 1, committed={"s": 3})
    with pytest.raises(StaleEpoch):
        sink.write_batch([cdr("e")], positions={"s": 99}, epoch=BIG - 2, committed={"s": 4})
    with pytest.raises(StaleEpoch):
        sink.write_batch([cdr("e")], positions={"s": 99}, epoch=SMALL, committed={"s": 4})
    sink.write_batch([cdr("f")], positions={"s": 5}, epoch=BIG, committed={"s": 4})
    assert sink.fence_epoch() == BIG
    with pytest.raises(StaleEpoch):
        sink.claim_epoch(BIG - 1)
    with pytest.raises(StaleEpoch):
        sink.write_batch([cdr("g")], positions={"s": 99}, epoch=BIG - 1)
    sink.write_batch([cdr("h")], positions={"s": 6}, epoch=BIG, committed={"s": 5})
    assert sink.fence_epoch() == BIG
    assert sink.positions() == {"s": 6}
    assert sink.report_id_counts("abcdefgh") == {
        "a": 1, "b": 1, "c": 1, "d": 1, "e": 0, "f": 1, "g": 0, "h": 1,
    }  # fmt: skip


def test_epoch_small_int_after_prepared_statements(sink: Sink) -> None:
    # PostgreSQL prepares a statement after a few runs; an epoch whose type (int2, int4, int8)
    # differs from the prepared one must still be compared as a number.
    for i in range(8):
        sink.write_batch([cdr(f"p{i}")], positions={"s": i + 1}, epoch=70000)
    with pytest.raises(StaleEpoch):
        sink.write_batch([cdr("stale")], positions={"s": 999}, epoch=3)
    with pytest.raises(StaleEpoch):
        sink.write_batch([cdr("stale")], positions={"s": 999}, epoch=69999)
    sink.write_batch([cdr("big")], positions={"s": 100}, epoch=2**40, committed={"s": 8})
    for i in range(8):
        with pytest.raises(StaleEpoch):
            sink.write_batch([cdr("stale")], positions={"s": 999}, epoch=i)
    assert sink.fence_epoch() == 2**40
    assert sink.positions() == {"s": 100}
    assert sink.report_id_counts(["stale"]) == {"stale": 0}


def test_positions_bytes_at_the_bigint_limit_and_mixed_sizes(sink: Sink) -> None:
    positions = {"a": 0, "b": 1, "c": 2**15, "d": 2**31, "e": BIG}
    sink.write_batch([cdr("x")], positions=positions, epoch=1)
    assert sink.positions() == positions
    sink.write_batch([], positions={"a": 1}, epoch=1, committed=positions)
    with pytest.raises(PositionsLost):
        sink.write_batch([], positions={"a": 2}, epoch=1, committed={"e": BIG, "b": 2})
    assert sink.positions() == {**positions, "a": 1}


def test_many_segments_in_one_batch(sink: Sink) -> None:
    n = 3000
    positions = {f"{i:08x}": i * 7 + 1 for i in range(n)}
    sink.write_batch([cdr("a")], positions=positions, epoch=1)
    assert sink.positions() == positions
    moved = {name: byte + 1 for name, byte in positions.items()}
    sink.write_batch([cdr("b")], positions=moved, epoch=1, committed=positions)
    assert sink.positions() == moved
    behind = dict(moved)
    behind[f"{n - 1:08x}"] += 1
    with pytest.raises(PositionsLost) as raised:
        sink.write_batch([cdr("c")], positions={}, epoch=1, committed=behind)
    assert raised.value.segment == f"{n - 1:08x}"
    assert sink.report_id_counts(["a", "b", "c"]) == {"a": 1, "b": 1, "c": 0}


def test_stale_writer_stores_no_positions_on_new_or_existing_segments(sink: Sink) -> None:
    sink.write_batch([cdr("a")], positions={"s": 10}, epoch=5)
    for committed in (None, {}, {"s": 10}, {"s": 11}, {"zz": 3}):
        with pytest.raises(StaleEpoch):
            sink.write_batch(
                [cdr("stale")],
                positions={"s": 1, "new": 7, "": 1, "NULL": 2},
                epoch=4,
                committed=committed,
            )
    assert sink.positions() == {"s": 10}
    assert sink.fence_epoch() == 5
    assert sink.report_id_counts(["stale"]) == {"stale": 0}


def test_stale_and_lost_at_once_is_stale(sink: Sink) -> None:
    # Both fail: nothing is stored either way; the fence is the verdict (the drainer steps down
    # rather than replaying under an epoch it no longer holds).
    sink.write_batch([], positions={"s": 10}, epoch=5)
    with pytest.raises(StaleEpoch):
        sink.write_batch([cdr("x")], positions={"s": 20}, epoch=4, committed={"s": 15})
    assert sink.positions() == {"s": 10}


def test_refused_row_and_positions_go_in_once(url: str, sink: Sink) -> None:
    sink.write_batch([cdr("first")], positions={"s": 10}, epoch=1)
    batch = [cdr(f"ok-{i}") for i in range(10)] + [cdr("huge", arrivals=2**70)]
    batch += [cdr(f"ok2-{i}") for i in range(10)]
    result = sink.write_batch(batch, positions={"s": 20, "t": 5}, epoch=1, committed={"s": 10})
    assert result.refused == 1
    assert sink.positions() == {"s": 20, "t": 5}
    assert sink.count_reports() == 21
    # The same batch again (a replay): positions and nothing twice.
    again = sink.write_batch(
        batch, positions={"s": 20, "t": 5}, epoch=1, committed={"s": 20, "t": 5}
    )
    assert (again.stored, again.rejected) == (0, 0)
    # A refused row with a positions check that fails: PositionsLost, not a refusal.
    batch2 = [cdr("n1"), cdr("huge2", arrivals=2**70), cdr("n2")]
    with pytest.raises(PositionsLost):
        sink.write_batch(batch2, positions={"s": 30}, epoch=1, committed={"s": 25})
    assert sink.report_id_counts(["n1", "n2"]) == {"n1": 0, "n2": 0}
    assert sink.count_rejected() == 1
    # A refused row in a stale batch: StaleEpoch.
    sink.claim_epoch(2)
    with pytest.raises(StaleEpoch):
        sink.write_batch(batch2, positions={"s": 30}, epoch=1, committed={"s": 20})
    assert sink.count_rejected() == 1
    assert sink.positions() == {"s": 20, "t": 5}


def test_duplicates_staged_path_and_positions(sink: Sink) -> None:
    sink.write_batch([cdr(f"d{i}") for i in range(10)], positions={"s": 10}, epoch=1)
    # Half stored already (a COPY fails, the staged way follows), positions moved once.
    batch = [cdr(f"d{i}") for i in range(5, 15)]
    result = sink.write_batch(batch, positions={"s": 20}, epoch=1, committed={"s": 10})
    assert (result.stored, result.duplicates) == (5, 5)
    assert sink.positions() == {"s": 20}
    # Next batch on the staged way at once, a check that fails: nothing.
    with pytest.raises(PositionsLost):
        sink.write_batch([cdr("d99"), cdr("d0")], positions={"s": 30}, epoch=1, committed={"s": 21})
    assert sink.positions() == {"s": 20}
    assert sink.report_id_counts(["d99"]) == {"d99": 0}
    # And a staged batch after it goes in with its positions.
    sink.write_batch([cdr("d99"), cdr("d0")], positions={"s": 30}, epoch=1, committed={"s": 20})
    assert sink.positions() == {"s": 30}
    assert sink.count_reports() == 16


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_first_writers_race_on_a_missing_fence_row(server_url: str) -> None:
    # Two writers of one journal, neither fence row nor positions exist yet; older and newer
    # epochs, overlapping and disjoint segments, overlapping report ids. Each round a new
    # cluster and journal, so every round is a first-writer race.
    a = Sink(server_url, cluster="c", journal="j")
    b = Sink(server_url, cluster="c", journal="j")
    a.upgrade()
    problems: list[str] = []
    try:
        for r in range(25):
            cluster, journal = f"/race/{r}", f"j{r}"
            old, new = (
                a.view(cluster=cluster, journal=journal),
                b.view(cluster=cluster, journal=journal),
            )
            shared = [f"r{r}-{i}" for i in range(30)]
            old_items = [cdr(x) for x in shared] + [cdr(f"r{r}-old-{i}") for i in range(5)]
            new_items = [cdr(x) for x in reversed(shared)] + [
                cdr(f"r{r}-new-{i}") for i in range(5)
            ]
            old_pos = {"s1": 100, "s2": 100, f"o{r}": 1} if r % 2 else {f"only-old-{r}": 3}
            new_pos = {"s2": 200, "s1": 200, "s3": 200}
            barrier = threading.Barrier(2)
            out: dict[str, BaseException | None] = {}

            def go(
                name: str,
                sink: Sink,
                items: list[Report],
                pos: dict[str, int],
                epoch: int,
                barrier: threading.Barrier = barrier,
                out: dict[str, BaseException | None] = out,
            ) -> None:
                barrier.wait()
                out[name] = attempt_write(sink, items, positions=pos, epoch=epoch)

            threads = [
                threading.Thread(target=go, args=("old", old, old_items, old_pos, 1)),
                threading.Thread(target=go, args=("new", new, new_items, new_pos, 2)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            if out.get("new") is not None:
                problems.append(f"round {r}: the newer writer failed: {out['new']!r}")
                continue
            stored = new.positions()
            counts = new.report_id_counts(
                [i.report_id for i in old_items] + [i.report_id for i in new_items]
            )
            if set(counts.values()) - {0, 1}:
                problems.append(f"round {r}: a report stored twice: {counts}")
            if new.fence_epoch() != 2:
                problems.append(f"round {r}: fence {new.fence_epoch()}")
            if isinstance(out.get("old"), StaleEpoch):
                if stored != new_pos:
                    problems.append(f"round {r}: stale writer's positions got in: {stored}")
                if any(counts[f"r{r}-old-{i}"] for i in range(5)):
                    problems.append(f"round {r}: stale writer's rows got in")
            elif out.get("old") is None:
                # It went first: its positions, overwritten where the newer named them.
                if stored != old_pos | new_pos:
                    problems.append(f"round {r}: positions {stored} after old then new")
                if not all(counts.values()):
                    problems.append(f"round {r}: a report missing")
            else:
                problems.append(f"round {r}: the older writer failed otherwise: {out['old']!r}")
    finally:
        a.close()
        b.close()
    assert not problems, "\n".join(problems)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_stale_and_new_writers_stream_on_one_journal(server_url: str) -> None:
    # A stale writer keeps writing batches while the new one takes over and writes its own, on
    # overlapping segments. Nothing of the stale one's after the takeover may land, no deadlock.
    old = Sink(server_url, cluster="/pair", journal="shared")
    new = Sink(server_url, cluster="/pair", journal="shared")
    old.upgrade()
    old.write_batch([cdr("seed")], positions={"s0": 1}, epoch=1)
    stop = threading.Event()
    old_errors: list[BaseException] = []
    old_done: list[int] = []
    old_refused: list[int] = []
    new_errors: list[BaseException] = []
    taken = threading.Event()

    def stale() -> None:
        n = 0
        while not stop.is_set() and n < 400:
            # Noted before the write: one begun before the takeover may commit before the claim
            # and return after it.
            after_takeover = taken.is_set()
            error = attempt_write(
                old,
                [cdr(f"old-{n}-{i}") for i in range(20)] + [cdr(f"both-{n % 50}")],
                positions={"s0": 1000 + n, f"s{n % 7}": 5000 + n, "sx": 9000 + n},
                epoch=1,
            )
            if error is None:
                old_done.append(n)
                if after_takeover:
                    old_errors.append(AssertionError(f"stale batch {n} stored after takeover"))
            elif isinstance(error, StaleEpoch):
                old_refused.append(n)
            else:
                old_errors.append(error)
            n += 1

    def fresh() -> None:
        committed: dict[str, int] = {}
        for n in range(60):
            try:
                if n == 5:
                    new.claim_epoch(2)
                    taken.set()
                    committed = new.positions()
                epoch = 2 if taken.is_set() else 1
                pos = {"s0": 100_000 + n, f"s{(n * 3) % 7}": 200_000 + n, "sy": n}
                new.write_batch(
                    [cdr(f"new-{n}-{i}") for i in range(20)] + [cdr(f"both-{n % 50}")],
                    positions=pos,
                    epoch=epoch,
                    committed=committed if taken.is_set() else None,
                )
                if taken.is_set():
                    committed = committed | pos
            except BaseException as error:
                new_errors.append(error)

    t1, t2 = threading.Thread(target=stale), threading.Thread(target=fresh)
    t1.start()
    t2.start()
    t2.join(timeout=180)
    stop.set()
    t1.join(timeout=60)
    try:
        assert not new_errors, new_errors[:3]
        assert not old_errors, old_errors[:3]
        # Once the fence has refused the stale writer, it refuses every later batch of it.
        assert old_refused and all(n < old_refused[0] for n in old_done), (old_done, old_refused)
        assert new.fence_epoch() == 2
        stored = new.positions()
        assert stored["sx"] < 9000 + 400
        # After the takeover, the last writer of every segment it named is the new one.
        assert stored["s0"] == 100_059
        assert stored["sy"] == 59
        ids = [f"both-{i}" for i in range(50)]
        assert set(new.report_id_counts(ids).values()) == {1}
    finally:
        old.close()
        new.close()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_waiting_writer_checks_positions_committed_while_it_waited(server_url: str) -> None:
    # The holder of the fence commits positions while another writer of the same epoch waits on
    # the fence row; the waiting writer's committed check names positions the holder had
    # committed before the waiting writer's statement began, and then the holder's later ones.
    holder = Sink(server_url, cluster="/same", journal="j")
    waiter = Sink(server_url, cluster="/same", journal="j")
    holder.upgrade()
    holder.write_batch([], positions={"s": 100}, epoch=1)
    try:
        with holder._engine.begin() as conn:  # the holder's open batch
            holder._open_batch(conn, 1, {"s": 200}, {"s": 100})
            writer = Write(
                waiter, [cdr("w")], positions={"s": 300}, epoch=1, committed={"s": 100}
            ).waiting()
        assert writer.outcome() is None
        assert holder.positions() == {"s": 300}
    finally:
        holder.close()
        waiter.close()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_new_epoch_waiting_on_a_stale_holder_sees_the_holders_positions(
    server_url: str,
) -> None:
    # The stale holder (epoch 1) is mid-batch when the new writer (epoch 2) arrives with a
    # check of what it committed (read after its own claim, so nothing of the stale writer can
    # follow). The stale holder commits first; the new writer's positions win after it.
    old = Sink(server_url, cluster="/p", journal="j")
    new = Sink(server_url, cluster="/p", journal="j")
    old.upgrade()
    old.write_batch([], positions={"s": 100, "t": 1}, epoch=1)
    try:
        with old._engine.begin() as conn:
            old._open_batch(conn, 1, {"s": 200, "u": 9}, {"s": 100})
            writer = Write(
                new, [cdr("n")], positions={"s": 150}, epoch=2, committed={"t": 1}
            ).waiting()
        assert writer.outcome() is None
        assert new.positions() == {"s": 150, "t": 1, "u": 9}
        assert new.fence_epoch() == 2
        with pytest.raises(StaleEpoch):
            old.write_batch([cdr("late")], positions={"s": 999}, epoch=1)
        assert new.positions() == {"s": 150, "t": 1, "u": 9}
    finally:
        old.close()
        new.close()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_first_writer_rolled_back_leaves_no_fence_to_the_second(server_url: str) -> None:
    # The first writer ever inserts the fence row, then fails its check (PositionsLost): the
    # second first writer, waiting on that insert, must then claim and write.
    a = Sink(server_url, cluster="/fresh", journal="j")
    b = Sink(server_url, cluster="/fresh", journal="j")
    a.upgrade()
    try:
        out: list[BaseException | None] = []
        lost: list[BaseException] = []
        with pytest.raises(PositionsLost):
            with a._engine.begin() as conn:
                try:
                    a._open_batch(conn, 5, {"s": 1}, {"s": 1})
                except PositionsLost as error:
                    lost.append(error)
                    thread = threading.Thread(
                        target=lambda: out.append(
                            attempt_write(b, [cdr("b")], positions={"s": 2}, epoch=3)
                        )
                    )
                    thread.start()
                    waits_on_a_row_lock(server_url, thread)  # b, on the insert, before a rolls back
                    raise
        thread.join(timeout=30)
        assert lost
        assert out == [None]
        assert b.fence_epoch() == 3
        assert b.positions() == {"s": 2}
    finally:
        a.close()
        b.close()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_database_killed_during_batches_with_a_positions_check(tmp_path: Path) -> None:
    # As test_sink's stream under a kill, with the drainer's committed check on every batch and
    # several segments: a batch whose commit was lost with the connection, retried, must neither
    # raise PositionsLost nor store anything twice.
    pg = Postgres(tmp_path / "db")
    pg.start()
    sink = Sink(pg.create_database("kill"), cluster="/pair", journal="rs-a")
    stop = threading.Event()
    try:
        sink.upgrade()
        batches, size = 40, 200
        done: list[int] = []
        retries: list[int] = []
        failures: list[BaseException] = []

        def stream() -> None:
            committed: dict[str, int] = {}
            try:
                for n in range(batches):
                    pos = {"00000001": (n + 1) * 1000, f"{n % 3 + 2:08d}": n + 1}
                    sink.write_batch_retrying(
                        [cdr(f"b{n:03d}-{i:04d}") for i in range(size)],
                        positions=pos,
                        epoch=1,
                        stop=stop,
                        on_retry=lambda attempt, _e: retries.append(attempt),
                        committed=committed,
                    )
                    committed = committed | pos
                    done.append(n)
            except BaseException as error:
                failures.append(error)

        writer = threading.Thread(target=stream)
        writer.start()
        wait_until(lambda: len(done) > 10 or failures, 60, "some batches", every_s=0.005)
        pg.kill()
        wait_until(lambda: retries or failures, 60, "a retry", every_s=0.01)
        pg.restart()
        wait_until(lambda: len(done) > 25 or failures, 60, "more batches", every_s=0.005)
        pg.kill()
        pg.restart()
        writer.join(timeout=180)
        stop.set()
        assert not failures, failures
        assert len(done) == batches
        ids = [f"b{n:03d}-{i:04d}" for n in range(batches) for i in range(size)]
        assert set(sink.report_id_counts(ids).values()) == {1}
        assert sink.positions()["00000001"] == batches * 1000
    finally:
        stop.set()
        sink.close()
        pg.stop()


def test_sqlite_very_many_committed_segments(tmp_path: Path) -> None:
    # The check's IN list on SQLite/MariaDB is one bind parameter per segment.
    sink = Sink(f"sqlite:///{tmp_path / 'r.db'}", cluster="c", journal="j")
    sink.upgrade()
    try:
        positions = {f"{i:08x}": 1 for i in range(40000)}
        sink.write_batch([], positions=positions, epoch=1)
        sink.write_batch([cdr("a")], positions={}, epoch=1, committed=positions)
        assert sink.report_id_counts(["a"]) == {"a": 1}
    finally:
        sink.close()


def test_unavailable_is_not_raised_for_a_stale_writer(sink: Sink) -> None:
    # A stale writer's retrying write gives up at once (StaleEpoch), it does not retry.
    sink.claim_epoch(9)
    stop = threading.Event()
    with pytest.raises(StaleEpoch):
        sink.write_batch_retrying(
            [cdr("x")], positions={"s": 1}, epoch=8, stop=stop, committed={"s": 0}
        )
    assert not issubclass(StaleEpoch, DatabaseUnavailable)
    assert sink.positions() == {}


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_positions_lowered_while_the_writer_waits_on_the_fence(server_url: str) -> None:
    # README: "a database holding positions behind what this drainer committed raises
    # PositionsLost with nothing stored". Here the database comes to hold s=50 (another writer
    # of the same epoch, holding the fence row, lowers it and commits) while this writer's batch
    # waits on the fence row with committed s=100. When the batch goes on, the database holds
    # positions behind what it committed.
    #
    # The check must be read by a statement begun after the wait on the fence row: one
    # statement holding both the claim and the check read the positions in the snapshot taken
    # before it waited, saw 100, and the batch went in over the lowered position.
    holder = Sink(server_url, cluster="/same", journal="j")
    waiter = Sink(server_url, cluster="/same", journal="j")
    holder.upgrade()
    holder.write_batch([], positions={"s": 100}, epoch=1)
    try:
        with holder._engine.begin() as conn:
            # The holder's batch, by the dialect's parts.
            assert holder._dialect.claim_fence(conn, "/same", 1)
            holder._dialect.store_positions(conn, "j", {"s": 50})
            writer = Write(
                waiter, [cdr("w")], positions={"s": 300}, epoch=1, committed={"s": 100}
            ).waiting()
        outcome = writer.outcome()
        stored = holder.positions()
        counts = holder.report_id_counts(["w"])
        assert isinstance(outcome, PositionsLost), (
            f"batch went in over a position lowered while it waited: {outcome!r}, "
            f"positions {stored}, reports {counts}"
        )
        assert stored == {"s": 50}
        assert counts == {"w": 0}
    finally:
        holder.close()
        waiter.close()
