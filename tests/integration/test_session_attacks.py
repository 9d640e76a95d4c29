"""Attacks on the session's changes through the public interface: reports sent to the broker,
a standalone server run on the harness's PostgreSQL or MariaDB, what the database holds read
back and compared with what was sent.

The changes attacked: the drainer's COPY as one write of pre-formatted text, a batch written
whole without savepoints (isolated by bisection only after the database refused a row), and
MariaDB's bulk INSERT with byte-for-byte keys.
"""

import json
import math
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import bindparam, create_engine, select, text

from reporting.harness.flow import assert_exactly_once
from reporting.harness.waiting import wait_until
from reporting.samples import database_poison, sample_report
from storage.database.schema import rejected_reports, reports
from tests.integration.test_fast_path_attacks import CASES, expected_columns, send_bodies

pytestmark = pytest.mark.integration


# Both databases: the mechanisms differ (COPY on PostgreSQL, multi-row INSERT on MariaDB).
on_both = pytest.mark.parametrize("database_name", ["postgresql", "mariadb"], indirect=True)


def _rows(db_url: str, table: Any, ids: list[str]) -> list[Any]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    select(table).where(table.c.report_id.in_(bindparam("ids", expanding=True))),
                    {"ids": ids},
                )
            )
    finally:
        engine.dispose()


def _rejected_counts(db_url: str, ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in _rows(db_url, rejected_reports, ids):
        counts[row.report_id] = counts.get(row.report_id, 0) + 1
    return counts


def _good_sq(rng: random.Random) -> bytes:
    return json.dumps(sample_report("sq", rng)).encode()


def _started(standalone: Any) -> Any:
    server = standalone()
    server.start()
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    return server


# -- a poison report in a batch that also holds a report twice --------------------------------


@on_both
def test_poison_beside_a_report_sent_twice_in_one_batch(
    standalone, activemq, db_url, queue_prefix
) -> None:
    """Queued before the server starts, so that they are drained together: groups of
    (A, A again, poison P, B). Every A and B stored once, every P in rejected_reports once, no A
    or B there."""
    rng = random.Random(7)
    token = uuid.uuid4().hex[:8]
    destination = f"/queue/{queue_prefix}gvp.reporting.sq"
    poison, why = database_poison(db_url, rng)
    messages = []
    good, poisons = [], []
    for n in range(5):
        a, p, b = f"a{n}-{token}", f"p{n}-{token}", f"b{n}-{token}"
        body = _good_sq(rng)
        messages += [
            (destination, body, {"report-id": a}),
            (destination, body, {"report-id": a}),
            (destination, poison, {"report-id": p}),
            (destination, _good_sq(rng), {"report-id": b}),
        ]
        good += [a, b]
        poisons.append(p)
    send_bodies(activemq.host, messages)
    _started(standalone)
    everything = good + poisons

    def landed() -> bool:
        # As many rejected rows as poisons, whichever they are: a lost poison never lands.
        stored = {row.report_id for row in _rows(db_url, reports, everything)}
        rejected = sum(_rejected_counts(db_url, everything).values())
        return stored >= set(good) and rejected >= len(poisons)

    try:
        wait_until(landed, 30, "every good report stored, as many rows rejected as poisons")
    finally:
        rejected = _rejected_counts(db_url, everything)
        stored = [row.report_id for row in _rows(db_url, reports, everything)]
        assert sorted(stored) == sorted(good), "stored: each good report once, no poison"
        assert rejected == dict.fromkeys(poisons, 1), "rejected: each poison once, nothing else"
    reasons = {row.reason for row in _rows(db_url, rejected_reports, poisons)}
    assert all(reason.startswith(why) for reason in reasons), reasons


@on_both
def test_poison_before_a_redelivered_report_rejects_only_the_poison(
    standalone, activemq, db_url, queue_prefix
) -> None:
    """A is stored; then P (poison) and A again (a redelivery or resend) are drained together,
    P first. rejected_reports holds P only; A is stored once, and B sent after is stored."""
    rng = random.Random(11)
    token = uuid.uuid4().hex[:8]
    destination = f"/queue/{queue_prefix}gvp.reporting.sq"
    poison, _ = database_poison(db_url, rng)
    a, p, b = f"a-{token}", f"p-{token}", f"b-{token}"
    body = _good_sq(rng)
    server = _started(standalone)
    send_bodies(activemq.host, [(destination, body, {"report-id": a})])
    assert_exactly_once(db_url, {a}, timeout_s=30)
    server.stop()
    send_bodies(
        activemq.host,
        [
            (destination, poison, {"report-id": p}),
            (destination, body, {"report-id": a}),
        ],
    )
    server.start()
    wait_until(lambda: _rejected_counts(db_url, [p]) == {p: 1}, 30, "the poison rejected")
    send_bodies(activemq.host, [(destination, _good_sq(rng), {"report-id": b})])
    assert_exactly_once(db_url, {a, b}, timeout_s=30)
    assert _rejected_counts(db_url, [a, b, p]) == {p: 1}


# -- MariaDB: the bulk INSERT and byte-for-byte keys, with the fast path's edge bodies ------------


def column_problems(rid: str, kind: str, payload: dict[str, Any], row: Any) -> list[str]:
    """How a stored row's typed columns differ from what the report's payload gives."""
    return [
        f"{rid!r}: {column} {getattr(row, column)!r}, want {want!r}"
        for column, want in expected_columns(kind, payload).items()
        if not _same(want, getattr(row, column))
    ]


def _same(want: Any, got: Any) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return want == got and math.copysign(1, want) == math.copysign(1, got)
    if isinstance(want, datetime) and isinstance(got, datetime):
        # MariaDB's DATETIME(6) holds UTC, read back naive.
        return want.astimezone(UTC).replace(tzinfo=None) == got.replace(tzinfo=None)
    return bool(want == got)


@pytest.mark.parametrize("database_name", ["mariadb"], indirect=True)
def test_edge_bodies_and_near_ids_on_mariadb_stored_as_sent(
    standalone, activemq, db_url, queue_prefix
) -> None:
    """The fast path's edge bodies that decode takes, and ids differing only in case, accent or
    a trailing space (and one sent twice), through MariaDB's bulk INSERT: each stored once, its
    payload the producer's text byte for byte, its typed columns the contract's."""
    token = uuid.uuid4().hex[:8]
    # deep-32 is MariaDB's documented poison (its JSON takes 31 levels); the sign of -0.0 is
    # test_minus_zero_value_keeps_its_sign_on_mariadb's.
    skipped = ("deep-32", "value-minus-zero-float")
    cases = [(n, kind, body) for n, kind, body, stored in CASES if stored and n not in skipped]
    near = [f"Near-{token}", f"near-{token}", f"near-{token} ", f"n\u00e9ar-{token}"]
    near += [f"n\u0065\u0301ar-{token}", f"near-{token}\U0001f600", f"near-{token}\U0001f601"]
    sq = '{"call_id":"c","component":"x","metric":"m","value":1}'
    messages = [
        (f"/queue/{queue_prefix}gvp.reporting.{kind}", body.encode(), {"report-id": name + token})
        for name, kind, body in cases
    ]
    destination = f"/queue/{queue_prefix}gvp.reporting.sq"
    messages += [(destination, sq.encode(), {"report-id": rid}) for rid in near]
    messages.append((destination, sq.encode(), {"report-id": near[1]}))
    send_bodies(activemq.host, messages)
    _started(standalone)
    wanted = {name + token for name, _, _ in cases} | set(near)
    assert_exactly_once(db_url, wanted, timeout_s=60)
    rows = {row.report_id: row for row in _rows(db_url, reports, sorted(wanted))}
    assert set(rows) == wanted
    engine = create_engine(db_url)
    with engine.connect() as conn:
        texts = dict(conn.execute(text("SELECT report_id, payload FROM reports")).all())
    engine.dispose()
    problems = []
    for name, kind, body in cases:
        if texts[name + token] != body:
            problems.append(f"{name}: payload {texts[name + token][:80]!r} is not the body")
        problems += column_problems(name, kind, json.loads(body), rows[name + token])
    assert not problems, "\n".join(problems)
    assert _rejected_counts(db_url, sorted(wanted)) == {}


@pytest.mark.parametrize("database_name", ["mariadb"], indirect=True)
def test_minus_zero_value_is_zero_in_the_typed_column_on_mariadb_and_kept_in_the_payload(
    standalone, activemq, db_url, queue_prefix
) -> None:
    # MariaDB's DOUBLE gives -0.0 (sent as the literal -0.0e0) back as 0, where PostgreSQL keeps
    # the sign (README, Database): the payload, the report as sent, keeps it.
    rid = f"minus-zero-{uuid.uuid4().hex[:8]}"
    body = b'{"call_id":"c","component":"x","metric":"m","value":-0.0}'
    send_bodies(
        activemq.host, [(f"/queue/{queue_prefix}gvp.reporting.sq", body, {"report-id": rid})]
    )
    _started(standalone)
    assert_exactly_once(db_url, {rid}, timeout_s=30)
    engine = create_engine(db_url)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT value, payload FROM reports WHERE report_id = :id"), {"id": rid}
        ).one()
    engine.dispose()
    assert row.value == 0.0 and math.copysign(1, row.value) == 1, row.value
    assert json.loads(row.payload)["value"] == -0.0 and '"value":-0.0' in row.payload


# -- PostgreSQL: COPY as one write of text made by the drainer ------------------------------------

# Text that COPY's text format gives a meaning to, or that a quick check might miss, each as the
# JSON escape a producer sends.
_AWKWARD = [
    "\t",
    "\\",
    "\\N",
    "\\.",
    "\n",
    "\r",
    "\r\n",
    "\b",
    "\f",
    "\v",
    "\x1c\x1f",
    "\x7f",
    "\u0085",
    "\u2028\u2029",
    "\U0001f600",
    "a\\tb",
    "\\\\N",
    "end\\",
]


def test_copy_text_stores_awkward_text_as_sent(standalone, activemq, pg_url, queue_prefix) -> None:
    """Typed text fields and ids holding tabs, backslashes, \\N, line ends, other controls,
    U+2028 and non-BMP characters, drained in one COPY with nothing stored before: each typed
    column, id and payload as sent."""
    token = uuid.uuid4().hex[:6]
    sent: dict[str, tuple[str, dict[str, Any]]] = {}
    for n, awkward in enumerate(_AWKWARD):
        payload = {
            "call_id": f"c{awkward}",
            "component": f"{awkward}{awkward}k",  # text fields must not be blank
            "tenant": f"{awkward}t",
            "ivr_profile": f"p{awkward}",
            "start": "2024-01-01T00:00:00+00:00",
            "end": "2024-01-01T00:01:00+00:00",
            "x": [awkward, {awkward: awkward}],
        }
        sent[f"cdr{n}-{token}"] = ("cdr", payload)
        sq = {"call_id": f"{awkward}c", "component": "x", "metric": f"{awkward}m", "value": 1e16}
        sent[f"sq{n}-{token}"] = ("sq", sq)
    for n, printable in enumerate(["\\N", "\\.", "a\\tb", "\\", "x\\N\\N", "\U0001f600\\"]):
        payload = {"call_id": "\\N", "component": "\tx", "metric": "m", "value": -1.5e-300}
        sent[f"{printable}{token}-{n}"] = ("sq", payload)
    send_bodies(
        activemq.host,
        [
            (f"/queue/{queue_prefix}gvp.reporting.{kind}", json.dumps(p).encode(), {"report-id": r})
            for r, (kind, p) in sent.items()
        ],
    )
    _started(standalone)
    assert_exactly_once(pg_url, set(sent), timeout_s=60)
    rows = {row.report_id: row for row in _rows(pg_url, reports, list(sent))}
    problems = []
    for rid, (kind, payload) in sent.items():
        if rows[rid].payload != payload:
            problems.append(f"{rid!r}: payload {rows[rid].payload!r}")
        problems += column_problems(rid, kind, payload, rows[rid])
    assert not problems, "\n".join(problems)
    assert _rejected_counts(pg_url, list(sent)) == {}


@pytest.mark.parametrize("database_name", ["mariadb"], indirect=True)
def test_body_at_max_body_bytes_of_escapes_stored_on_mariadb(
    standalone, activemq, db_url, queue_prefix
) -> None:
    """A body of exactly max_body_bytes (1 MiB), nearly all of it escapes the driver doubles
    again (backslashes, quotes) and 4-byte characters, between ordinary reports in one batch:
    all stored, the big payload byte for byte, the stream moving after it."""
    token = uuid.uuid4().hex[:8]
    head = b'{"call_id":"c","component":"x","metric":"m","value":1,"x":"'
    unit = '\\\\\\"\U0001f600'.encode()  # \\ \" and an emoji: 8 bytes
    room = (1 << 20) - len(head) - 2
    fill = unit * (room // len(unit))
    big = head + fill + b"a" * (room - len(fill)) + b'"}'
    assert len(big) == 1 << 20
    small = b'{"call_id":"c","component":"x","metric":"m","value":2}'
    destination = f"/queue/{queue_prefix}gvp.reporting.sq"
    ids = [f"before-{token}", f"big-{token}", f"after-{token}"]
    bodies = [small, big, small]
    send_bodies(
        activemq.host,
        [(destination, b, {"report-id": r}) for r, b in zip(ids, bodies, strict=True)],
    )
    _started(standalone)
    assert_exactly_once(db_url, set(ids), timeout_s=60)
    engine = create_engine(db_url)
    with engine.connect() as conn:
        stored = conn.scalar(
            text("SELECT payload FROM reports WHERE report_id = :id"), {"id": ids[1]}
        )
    engine.dispose()
    assert stored.encode() == big
    later = f"later-{token}"
    send_bodies(activemq.host, [(destination, small, {"report-id": later})])
    assert_exactly_once(db_url, {later}, timeout_s=30)
