"""Attacks on the database write path through the public interface: reports sent to the broker
with stomp.py, a standalone server run on the harness's PostgreSQL or MariaDB, processes and the
database killed with SIGKILL, and what the database holds read back.

The code attacked: a batch written whole without savepoints, and, when the database refuses a row
of it, rolled back and written again isolating the refused rows by bisection (on PostgreSQL the
whole pass COPYs straight into `reports`, the isolating pass goes the staged way); `CopyRows`
kept one row a report so that the bisection's halves match.
"""

import json
import random
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from reporting.harness.flow import assert_exactly_once
from reporting.harness.waiting import holds_within, wait_until
from reporting.samples import database_poison, sample_report
from storage.database.schema import rejected_reports, reports
from storage.reports import KINDS
from tests.integration.test_fast_path_attacks import send_bodies
from tests.integration.test_session_attacks import _rejected_counts, _rows, _started, on_both

pytestmark = pytest.mark.integration

REFUSED = "database refused"


def _poison(kind: str, db_url: str, rng: random.Random) -> bytes:
    """A report of `kind` that decode takes and the database refuses: `database_poison`'s extra
    field (a number jsonb cannot hold, or JSON nested past MariaDB's depth) on a valid report."""
    tail = database_poison(db_url, rng)[0].rsplit(b", ", 1)[1]  # b'"tiny": 1e-20000}' or deep
    return json.dumps(sample_report(kind, rng)).encode()[:-1] + b", " + tail


def _good(kind: str, rng: random.Random) -> bytes:
    return json.dumps(sample_report(kind, rng)).encode()


def _to(queue_prefix: str, kind: str) -> str:
    return f"/queue/{queue_prefix}gvp.reporting.{kind}"


def _drained(server: Any) -> None:
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 60, "the journal to drain")


def _check(
    db_url: str, good: set[str], poisons: set[str], malformed: set[str] = frozenset()
) -> None:
    """Every good report stored once; every poison and malformed message once in
    rejected_reports (a poison with the database's reason); nothing else there, no poison or
    malformed message in `reports`."""
    everything = sorted(good | poisons | malformed)
    assert_exactly_once(db_url, good, timeout_s=60)
    # Every good report stored does not mean every rejected one is in: a malformed message or a
    # poison sent after the last good report of its queue (the mixes' last sq and events
    # messages), or one of another queue, may be in a later batch. (A time-out leaves it to the
    # assertion below to name what is missing.)
    holds_within(lambda: set(_rejected_counts(db_url, everything)) >= poisons | malformed, 60)
    stored = sorted(row.report_id for row in _rows(db_url, reports, everything))
    assert stored == sorted(good), "reports holds the good reports, once each"
    rejected = _rejected_counts(db_url, everything)
    assert rejected == dict.fromkeys(poisons | malformed, 1), "each rejected once, nothing else"
    for row in _rows(db_url, rejected_reports, sorted(poisons)):
        assert row.reason.startswith(REFUSED), (row.report_id, row.reason)


# -- a poison sent again ----------------------------------------------------------------------


@on_both
def test_poison_sent_again_is_rejected_once(standalone, activemq, db_url, queue_prefix) -> None:
    """P (a poison) is rejected; P is sent again, same report-id and body, as a producer resend
    or a broker redelivery would: still one row in rejected_reports, as for a malformed message
    sent twice (M here) and a good report sent twice (A, stored once)."""
    rng = random.Random(21)
    token = uuid.uuid4().hex[:8]
    p, m, a, b = (f"{x}-{token}" for x in ("p", "m", "a", "b"))
    sq = _to(queue_prefix, "sq")
    once = [
        (sq, _poison("sq", db_url, rng), {"report-id": p}),
        (sq, b"not json", {"report-id": m}),
        (sq, _good("sq", rng), {"report-id": a}),
    ]
    server = _started(standalone)
    send_bodies(activemq.host, once)
    wait_until(lambda: _rejected_counts(db_url, [p, m]) == {p: 1, m: 1}, 30, "P and M rejected")
    assert_exactly_once(db_url, {a}, timeout_s=30)
    send_bodies(activemq.host, [*once, (sq, _good("sq", rng), {"report-id": b})])
    assert_exactly_once(db_url, {a, b}, timeout_s=30)
    _drained(server)
    _check(db_url, {a, b}, {p}, {m})


# -- everything in one batch, then two bursts ------------------------------------------------


@on_both
def test_mixed_batches_of_poisons_duplicates_and_malformed_messages(
    standalone, activemq, db_url, queue_prefix
) -> None:
    """Queued before the server starts, so that they are drained together: good reports of every
    kind, many poisons of every kind (some first, some last, some side by side), good reports
    sent twice in the batch, reports stored before (sent again), malformed messages. Then two
    bursts with the server running, the second sent as the first is drained, each with the same
    mix and ids of the first batch again. Each good report stored once, each poison and
    malformed message rejected once, the journal drained."""
    rng = random.Random(22)
    token = uuid.uuid4().hex[:8]
    good: set[str] = set()
    poisons: set[str] = set()
    malformed: set[str] = set()
    earlier = {f"earlier-{k}-{token}": (k, _good(k, rng)) for k in KINDS}
    server = _started(standalone)
    send_bodies(
        activemq.host,
        [(_to(queue_prefix, k), body, {"report-id": r}) for r, (k, body) in earlier.items()],
    )
    assert_exactly_once(db_url, set(earlier), timeout_s=30)
    good |= set(earlier)
    server.stop()

    def mix(tag: str, resent: list[tuple[str, bytes, dict[str, str]]]) -> list[Any]:
        messages: list[Any] = []
        for n in range(24):
            kind = KINDS[n % len(KINDS)]
            dest = _to(queue_prefix, kind)
            g, p = f"{tag}-g{n}-{token}", f"{tag}-p{n}-{token}"
            body = _good(kind, rng)
            if n % 3 == 0:  # a poison side by side with another
                p2 = f"{tag}-pp{n}-{token}"
                messages.append((dest, _poison(kind, db_url, rng), {"report-id": p2}))
                poisons.add(p2)
            messages.append((dest, _poison(kind, db_url, rng), {"report-id": p}))
            messages.append((dest, body, {"report-id": g}))
            if n % 4 == 1:  # the same report twice in the batch, a poison between
                messages.append((dest, _poison(kind, db_url, rng), {"report-id": f"{p}x"}))
                messages.append((dest, body, {"report-id": g}))
                poisons.add(f"{p}x")
            if n % 5 == 2:
                m = f"{tag}-m{n}-{token}"
                messages.append((dest, b'{"call_id": ', {"report-id": m}))
                malformed.add(m)
            good.add(g)
            poisons.add(p)
        last = f"{tag}-plast-{token}"
        messages.append(
            (_to(queue_prefix, "events"), _poison("events", db_url, rng), {"report-id": last})
        )
        poisons.add(last)
        return resent + messages

    resent = [(_to(queue_prefix, k), body, {"report-id": r}) for r, (k, body) in earlier.items()]
    first = mix("one", resent[:2])
    send_bodies(activemq.host, first)
    server.start()
    _check(db_url, set(good), set(poisons), set(malformed))

    # Two bursts: the drainer's read-ahead may join what arrived after a batch to it.
    second = mix("two", resent[2:] + [m for m in first if "-g" in m[2]["report-id"]][:6])
    third = mix("three", [m for m in first if "-g1" in m[2]["report-id"]])
    send_bodies(activemq.host, second)
    wait_until(
        lambda: _rejected_counts(db_url, [f"two-p0-{token}"]) != {}, 30, "the first burst drained"
    )
    send_bodies(activemq.host, third)
    _check(db_url, good, poisons, malformed)
    _drained(server)
    assert server.status()["database"] == "up"


# -- the database killed in the middle of an isolating pass ------------------------------------


def _isolating(pg_url: str) -> bool:
    """True while a connection to the test's database is in the staged way's COPY or INSERT, or
    a savepoint: only the isolating pass does that on a server that met no duplicate."""
    name = pg_url.rsplit("/", 1)[1]
    try:
        with psycopg.connect(
            pg_url.replace("postgresql+psycopg", "postgresql"), autocommit=True
        ) as c:
            rows = c.execute(
                "SELECT query FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
                " AND (query LIKE '%%reports_in%%' OR query LIKE 'SAVEPOINT%%'"
                " OR query LIKE 'RELEASE SAVEPOINT%%')",
                (name,),
            ).fetchall()
    except psycopg.OperationalError:
        return False
    return bool(rows)


def _mixed(
    queue_prefix: str, db_url: str, rng: random.Random, count: int, poison: Callable[[int], bool]
) -> tuple[list[Any], set[str], set[str]]:
    """`count` messages of every kind, the n-th a poison where `poison(n)`: the messages, the
    good reports' ids and the poisons' ids."""
    token = uuid.uuid4().hex[:8]
    good: set[str] = set()
    poisons: set[str] = set()
    messages = []
    for n in range(count):
        kind = KINDS[n % len(KINDS)]
        rid = f"m{n}-{token}"
        body = _poison(kind, db_url, rng) if poison(n) else _good(kind, rng)
        messages.append((_to(queue_prefix, kind), body, {"report-id": rid}))
        (poisons if poison(n) else good).add(rid)
    return messages, good, poisons


def test_database_killed_in_an_isolating_pass(
    standalone, activemq, postgres, pg_url, queue_prefix
) -> None:
    """A batch of 500 with 120 poisons spread through it is being isolated when PostgreSQL is
    SIGKILLed; it is restarted. Nothing of the batch was committed: written again, each good
    report stored once, each poison rejected once, nothing stranded."""
    rng = random.Random(23)
    one_in_four = lambda n: n % 4 == 1 and n < 480  # noqa: E731 - 120 poisons
    messages, good, poisons = _mixed(queue_prefix, pg_url, rng, 500, one_in_four)
    send_bodies(activemq.host, messages)
    server = _started(standalone)
    wait_until(lambda: _isolating(pg_url), 60, "the isolating pass", every_s=0.01)
    postgres.kill()
    postgres.restart()
    _check(pg_url, good, poisons)
    _drained(server)
    wait_until(lambda: server.status()["database"] == "up", 30, "database: up")


def test_server_killed_in_an_isolating_pass_rejects_nothing_twice(
    standalone, activemq, pg_url, queue_prefix
) -> None:
    """The server is SIGKILLed while isolating a batch of poisons and good reports, and started
    again: the batch, replayed from the journal, is stored once and its poisons rejected once;
    what is sent after is stored."""
    rng = random.Random(24)
    token = uuid.uuid4().hex[:8]
    messages, good, poisons = _mixed(queue_prefix, pg_url, rng, 400, lambda n: n % 5 == 0)
    send_bodies(activemq.host, messages)
    server = _started(standalone)
    wait_until(lambda: _isolating(pg_url), 60, "the isolating pass", every_s=0.01)
    server.kill()
    server.start()
    after = f"after-{token}"
    send_bodies(activemq.host, [(_to(queue_prefix, "sq"), _good("sq", rng), {"report-id": after})])
    _check(pg_url, good | {after}, poisons)
    _drained(server)


# -- a poison carrying the id of a good report of its batch ---------------------------------


@on_both
def test_a_poison_sharing_a_good_reports_id_ends_the_same_whatever_its_batch_holds(
    standalone, activemq, db_url, queue_prefix
) -> None:
    """Two batches, each: a good report, then a poison sent with the same report-id (a producer
    resending under the id with a body the database refuses), then good reports. The second
    batch also holds an unrelated poison Q. The poison with X's id and the one with Y's id are
    the same case and must end the same way (both rejected once, or both absorbed as
    duplicates); X and Y stored once, Q rejected once."""
    rng = random.Random(25)
    token = uuid.uuid4().hex[:8]
    sq = _to(queue_prefix, "sq")
    server = _started(standalone)
    outcome = {}
    for name, extra in (("x", []), ("y", [f"q-{token}"])):
        rid = f"{name}-{token}"
        messages = [
            (sq, _good("sq", rng), {"report-id": rid}),
            (sq, _poison("sq", db_url, rng), {"report-id": rid}),
        ]
        messages += [(sq, _poison("sq", db_url, rng), {"report-id": q}) for q in extra]
        after = [f"{name}-after{n}-{token}" for n in range(3)]
        messages += [(sq, _good("sq", rng), {"report-id": a}) for a in after]
        server.stop()  # queued while stopped, so that they are one batch
        send_bodies(activemq.host, messages)
        server.start()
        assert_exactly_once(db_url, {rid, *after}, timeout_s=30)
        _drained(server)
        outcome[name] = _rejected_counts(db_url, [rid]).get(rid, 0)
    assert _rejected_counts(db_url, [f"q-{token}"]) == {f"q-{token}": 1}
    assert outcome["x"] == outcome["y"] and outcome["x"] <= 1, outcome


# -- a batch of nothing but poisons -----------------------------------------------------------


@on_both
def test_a_batch_of_nothing_but_poisons_keeps_the_stream_moving(
    standalone, activemq, db_url, queue_prefix
) -> None:
    """A full batch (batch_records 500) of poisons of every kind, one good report behind it:
    every poison isolated (about two savepoints each) and rejected once, the good report stored
    within the test's time, the database `up` throughout."""
    rng = random.Random(26)
    token = uuid.uuid4().hex[:8]
    poisons = {f"all-p{n}-{token}": KINDS[n % len(KINDS)] for n in range(500)}
    behind = f"behind-{token}"
    messages = [
        (_to(queue_prefix, kind), _poison(kind, db_url, rng), {"report-id": rid})
        for rid, kind in poisons.items()
    ]
    messages.append((_to(queue_prefix, "cdr"), _good("cdr", rng), {"report-id": behind}))
    send_bodies(activemq.host, messages)
    server = _started(standalone)
    seen: set[str] = set()

    def stored() -> bool:
        seen.add(server.status()["database"])
        return bool(_rows(db_url, reports, [behind]))

    wait_until(stored, 60, "the report behind 500 poisons stored")
    _check(db_url, {behind}, set(poisons))
    _drained(server)
    assert seen == {"up"}, seen
