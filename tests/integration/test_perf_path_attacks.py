"""Attacks on the performance changes of the session, through the public interface only:
reports sent to the broker with stomp.py (or raw STOMP frames over a socket), a standalone
server run on the harness's PostgreSQL or MariaDB, the database killed, paused or its
connections torn down through the harness's TCP proxy, and what the database holds read back.

The changes attacked: the typed columns copied by the wire's validation (decode) into the
journal record; COPY text made by psycopg's own row formatter; stomp.py's frame reader replaced
(frames found at offsets in one buffer, content-length found by hand); the pooled connection
pinged only after a second idle instead of before every batch.
"""

import json
import random
import socket
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from reporting.harness import TcpProxy
from reporting.harness.flow import assert_exactly_once
from reporting.harness.waiting import wait_until
from reporting.samples import sample_report
from storage.database.schema import rejected_reports, reports
from storage.reports import KINDS
from tests.conftest import on_databases
from tests.integration.test_fast_path_attacks import send_bodies, standard_decision
from tests.integration.test_session_attacks import (
    _rejected_counts,
    _rows,
    _started,
    column_problems,
    on_both,
)

pytestmark = pytest.mark.integration


def _to(queue_prefix: str, kind: str) -> str:
    return f"/queue/{queue_prefix}gvp.reporting.{kind}"


def _landed(db_url: str, ids: list[str]) -> Callable[[], bool]:
    """Whether each of `ids` is in reports or in rejected_reports."""

    def check() -> bool:
        stored = {row.report_id for row in _rows(db_url, reports, ids)}
        rejected = set(_rejected_counts(db_url, ids))
        return stored | rejected >= set(ids)

    return check


def _payload_texts(db_url: str, ids: list[str]) -> dict[str, Any]:
    """report_id -> the payload as the database gives it back, parsed."""
    rows = _rows(db_url, reports, ids)
    out = {}
    for row in rows:
        payload = row.payload
        out[row.report_id] = json.loads(payload) if isinstance(payload, str) else payload
    return out


def _check_stored_as_sent(db_url: str, sent: dict[str, tuple[str, bytes]]) -> None:
    """Each id of `sent` that the standard parser takes stored once with its payload and typed
    columns as the body says; each it refuses rejected once, never stored."""
    ids = sorted(sent)
    wait_until(_landed(db_url, ids), 60, "every message stored or rejected")
    good = {rid for rid, (kind, body) in sent.items() if standard_decision(kind, body)}
    # A count of another kind past bigint is copied unbounded and the database refuses the row
    # (storage.reports._copy): rejected, with the database's reason.
    refused_by_database = {rid for rid in good if _past_bigint(json.loads(sent[rid][1]))}
    good -= refused_by_database
    bad = set(sent) - good
    rows = {row.report_id: row for row in _rows(db_url, reports, ids)}
    rejected = _rejected_counts(db_url, ids)
    problems = []
    wrongly_stored = sorted(bad & set(rows))
    if wrongly_stored:
        problems.append(f"stored though the standard parser refuses them: {wrongly_stored}")
    refused = sorted(good & set(rejected))
    for row in _rows(db_url, rejected_reports, refused):
        problems.append(f"{row.report_id!r} rejected: {row.reason}")
    missing_bad = sorted(rid for rid in bad if rejected.get(rid) != 1)
    for row in _rows(db_url, rejected_reports, sorted(refused_by_database)):
        if not row.reason.startswith("database refused"):
            problems.append(f"{row.report_id!r} rejected, not by the database: {row.reason}")
    if missing_bad:
        problems.append(f"not rejected once: {missing_bad}")
    payloads = _payload_texts(db_url, sorted(good))
    for rid in sorted(good & set(rows)):
        kind, body = sent[rid]
        payload = json.loads(body)
        if _numbers_exact(payloads[rid]) != _numbers_exact(payload):
            problems.append(f"{rid!r}: payload {str(payloads[rid])[:120]} is not the body")
        problems += column_problems(rid, kind, payload, rows[rid])
    assert not problems, "\n".join(problems)


def _numbers_exact(value: Any) -> Any:
    """`value` with its numbers as exact decimals: jsonb keeps 1e308 as the integer it is."""
    if isinstance(value, dict):
        return {k: _numbers_exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_exact(v) for v in value]
    if type(value) in (int, float):
        return Decimal(repr(value)).normalize()
    return value


def _past_bigint(payload: dict[str, Any]) -> bool:
    return any(
        type(payload.get(name)) is int and not -(2**63) <= payload[name] < 2**63
        for name in ("arrivals", "peak")
    )


# -- 1. typed columns copied by the wire's validation ---------------------------------------------

_ODD_TIMES = [
    "2026-12-02",
    "2026-12-02T10:00:00+14:00",
    "2026-12-02T10:00:00-12:00",
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC: NULL
    "0001-01-01T00:30:00-00:30",
    "9999-12-31T23:00:00-05:00",  # after 9999 in UTC: NULL
    "9999-12-31T23:59:59.999999+00:00",
    "2026-12-02T10:00Z",
    "2026-12-02T10:00:00.1234567Z",
    "2026-12-02T10:00:00+05:30:15.5",
    "20261202T100000",
    "2026-W49-3",
    "2026-12-02 10:00",
    "10:00",
    "",
    1,
]
_ODD_VALUES = [
    1,
    1.5,
    -0.0,
    5e-324,
    1e308,
    10**19,
    2**63 - 1,
    2**63,
    10**400,
    -1,
    True,
    False,
    None,
    "1",
    [],
    {},
]
_ODD_TEXTS = [
    "x" * 512,
    "x" * 513,
    "\u00e9" * 512,
    "\U0001f600" * 512,
    "\U0001f600" * 513,
    " ",
    "\u3000",
    "\x1c",
    "\u200b",
    "\\N",
    "a\tb",
]


def _odd_bodies(rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(name, kind, body): each kind's sample with one field (its own or another kind's, such as
    an event's tenant or value) given an odd value."""
    out = []
    for kind in KINDS:
        base = sample_report(kind, rng)
        fields: dict[str, list[Any]] = {
            "start": _ODD_TIMES,
            "end": _ODD_TIMES,
            "interval_start": _ODD_TIMES,
            "at": _ODD_TIMES,
            "arrivals": _ODD_VALUES,
            "peak": _ODD_VALUES,
            "value": _ODD_VALUES,
            "call_id": _ODD_TEXTS,
            "component": _ODD_TEXTS[:5],
            "tenant": _ODD_TEXTS[:5] + [7],
            "metric": _ODD_TEXTS[:5],
        }
        for name, values in fields.items():
            if name in ("start", "end", "interval_start", "at") and name not in base:
                continue  # a time of another kind is not copied: nothing to check
            for n, value in enumerate(values):
                payload = dict(base)
                payload[name] = value
                body = json.dumps(payload, ensure_ascii=bool(n % 2)).encode()
                out.append((f"{kind}-{name}-{n}", kind, body))
    return out


@on_both
def test_odd_typed_values_are_stored_as_the_payload_says(
    standalone, activemq, db_url, database_name, queue_prefix
) -> None:
    """Times with odd offsets, years 0001 and 9999 pushed past UTC's range, dates alone; huge
    ints, floats, bools, text at and past 512 characters; fields of other kinds on a report:
    every report the standard parser takes stored with the typed columns the contract gives its
    payload, every other rejected."""
    rng = random.Random(31)
    token = uuid.uuid4().hex[:8]
    cases = _odd_bodies(rng)
    if database_name == "mariadb":
        # MariaDB's DATETIME starts at year 1000 and its DOUBLE has no -0 (README, Database).
        cases = [c for c in cases if b"0001-01-01" not in c[2] and b"-0.0" not in c[2]]
    sent = {f"{name}-{token}": (kind, body) for name, kind, body in cases}
    _started(standalone)
    send_bodies(
        activemq.host,
        [(_to(queue_prefix, kind), body, {"report-id": rid}) for rid, (kind, body) in sent.items()],
    )
    _check_stored_as_sent(db_url, sent)


# -- 2. COPY text made by psycopg's row formatter -------------------------------------------------

_AWKWARD = [
    "\\",
    "\\\\",
    "\\N",
    "\\n",
    "a\\tb",
    "\t",
    "\n",
    "\r\n",
    "\b\f\v",
    "\x01\x1f\x7f",
    "\u2028\u2029",
    "\u0085",
    "\\.",
    "end\\",
    "\U0001f600\\N\t",
    "\ufeff",
]


@on_both
def test_awkward_text_in_ids_components_and_payloads_is_stored_as_sent(
    standalone, activemq, db_url, queue_prefix
) -> None:
    """Backslashes, \\N, tabs, newlines, \\r, \\b, \\f, \\v, other control characters and unicode
    (as JSON escapes and as raw UTF-8) in ids, typed text fields and payloads, all in one batch
    (queued before the server starts): each stored once with what was sent, a lone surrogate
    escape rejected without taking its batch with it."""
    token = uuid.uuid4().hex[:8]
    rng = random.Random(32)
    sent: dict[str, tuple[str, bytes]] = {}
    messages = []
    for n, awkward in enumerate(_AWKWARD):
        for kind in ("cdr", "sq"):
            payload = sample_report(kind, rng)
            payload["component"] = f"c{awkward}"
            payload["call_id"] = f"{awkward}id"
            payload["extra"] = {"k": awkward, awkward: [awkward, 1.5]}
            if kind == "cdr":
                payload["tenant"] = awkward + "t"
            else:
                payload["metric"] = "m" + awkward
            body = json.dumps(payload, ensure_ascii=bool(n % 2)).encode()
            printable = "".join(ch for ch in awkward if ch.isprintable())
            rid = f"{kind}{n}{printable}-{token}"
            sent[rid] = (kind, body)
            messages.append((_to(queue_prefix, kind), body, {"report-id": rid}))
    surrogate = f"lone-{token}"
    body = json.dumps(sample_report("sq", rng)).encode()[:-1] + b', "x": "a\\udc80b"}'
    sent[surrogate] = ("sq", body)
    messages.append((_to(queue_prefix, "sq"), body, {"report-id": surrogate}))
    send_bodies(activemq.host, messages)
    _started(standalone)
    _check_stored_as_sent(db_url, sent)
    assert _rejected_counts(db_url, [surrogate]) == {surrogate: 1}


# -- 3. the frame reader --------------------------------------------------------------------------


def _raw_stomp_send(host: str, frames: list[bytes], *, chunk: int | None = None) -> None:
    """Sends CONNECT, then `frames` (each a SEND with a receipt header 'r<n>'), optionally cut
    into `chunk`-byte writes, and waits for every RECEIPT."""
    address, port = host.rsplit(":", 1)
    with socket.create_connection((address, int(port)), timeout=30) as sock:
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\x00")
        data = b""
        while b"\x00" not in data:
            got = sock.recv(4096)
            assert got, "the broker closed the connection"
            data += got
        assert data.startswith(b"CONNECTED"), data[:200]
        stream = b"".join(frames)
        step = chunk or len(stream) or 1
        for at in range(0, len(stream), step):
            sock.sendall(stream[at : at + step])
        want = {f"receipt-id:r{n}".encode() for n in range(len(frames))}
        data = data[data.index(b"\x00") + 1 :]
        deadline = time.monotonic() + 60
        while want and time.monotonic() < deadline:
            for line in data.split(b"\n"):
                want.discard(line.strip())
            if b"ERROR" in data:
                raise AssertionError(data[:500])
            if want:
                got = sock.recv(65536)
                assert got, "the broker closed the connection"
                data += got
        assert not want, f"no receipt for {sorted(want)[:5]}"
        sock.sendall(b"DISCONNECT\n\n\x00")


def _send_frame(destination: str, body: bytes, report_id: str, n: int) -> bytes:
    return (
        (
            f"SEND\ndestination:{destination}\npersistent:true\nreport-id:{report_id}\n"
            f"receipt:r{n}\ncontent-length:{len(body)}\n\n"
        ).encode()
        + body
        + b"\x00\n"
    )


def test_bodies_holding_nul_bytes_keep_their_frames_and_their_neighbours(
    standalone, activemq, pg_url, queue_prefix
) -> None:
    """Bodies holding NUL bytes (at the start, in the middle, at the end, only NULs; some
    looking like a frame), sent with content-length between good reports, some queued before
    the server starts and some while it runs (cut into 7-byte writes): each NUL body rejected
    with its raw bytes exactly as sent, each good report stored once with its payload."""
    rng = random.Random(33)
    token = uuid.uuid4().hex[:8]
    sq = _to(queue_prefix, "sq")
    nul_bodies = [
        b"\x00",
        b"\x00" * 300,
        b"\x00{}",
        json.dumps(sample_report("sq", rng)).encode() + b"\x00",
        b'{"a":"\x00"}',
        b"\x00\nMESSAGE\ncontent-length:5\n\n12345\x00\n\n",
        b"x\n\n\x00content-length:99\n\n\x00",
        b"\r\n\r\n\x00\r\n",
        bytes(range(256)) * 4,
    ]
    good: dict[str, tuple[str, bytes]] = {}
    nul: dict[str, bytes] = {}
    problems = []
    for round_, chunk in enumerate((None, 7)):
        frames = []
        for n, body in enumerate(nul_bodies):
            g = f"g{round_}-{n}-{token}"
            good[g] = ("sq", json.dumps(sample_report("sq", rng)).encode())
            frames.append(_send_frame(sq, good[g][1], g, len(frames)))
            rid = f"nul{round_}-{n}-{token}"
            nul[rid] = body
            frames.append(_send_frame(sq, body, rid, len(frames)))
        # A report-id with STOMP's header escapes: a colon and a backslash.
        escaped = f"esc{round_}:{token}\\x"
        good[escaped] = ("sq", json.dumps(sample_report("sq", rng)).encode())
        frames.append(_send_frame(sq, good[escaped][1], f"esc{round_}\\c{token}\\\\x", len(frames)))
        last = f"last{round_}-{token}"
        good[last] = ("sq", json.dumps(sample_report("sq", rng)).encode())
        frames.append(_send_frame(sq, good[last][1], last, len(frames)))
        _raw_stomp_send(activemq.host, frames, chunk=chunk)
        if round_ == 0:
            _started(standalone)
    ids = sorted(good) + sorted(nul)
    wait_until(_landed(pg_url, ids), 60, "every message stored or rejected")
    assert_exactly_once(pg_url, set(good), timeout_s=30)
    payloads = _payload_texts(pg_url, sorted(good))
    for rid, (_, body) in good.items():
        if payloads.get(rid) != json.loads(body):
            problems.append(f"{rid}: payload {payloads.get(rid)!r}")
    assert _rejected_counts(pg_url, ids) == dict.fromkeys(nul, 1)
    for row in _rows(pg_url, rejected_reports, sorted(nul)):
        if bytes(row.raw) != nul[row.report_id]:
            problems.append(f"{row.report_id}: raw {bytes(row.raw)[:60]!r}")
    assert not problems, "\n".join(problems)


def test_bodies_at_and_over_max_body_bytes_and_many_tiny_ones(
    standalone, activemq, pg_url, queue_prefix
) -> None:
    """With max_body_bytes 4096: a body of exactly 4096 bytes stored (its payload whole), 4097
    rejected (raw cut to 4096), a body far over it (1 MB of NUL-holding bytes) rejected, and 2,000
    tiny frames queued around them before the server starts, so that reads hold many frames and
    frames cut across reads: every good report stored once."""
    rng = random.Random(34)
    token = uuid.uuid4().hex[:8]
    sq = _to(queue_prefix, "sq")
    limit = 4096

    def padded(size: int) -> bytes:
        head = json.dumps(sample_report("sq", rng)).encode()[:-1] + b', "pad": "'
        return (
            head + b"\\\\" * ((size - len(head) - 2) // 2) + b"y" * ((size - len(head)) % 2) + b'"}'
        )

    exact, over = padded(limit), padded(limit + 1)
    assert len(exact) == limit and len(over) == limit + 1
    huge = (b"\x00" + b"z" * 1023) * 1024
    good: dict[str, bytes] = {f"exact-{token}": exact}
    bad: dict[str, bytes] = {f"over-{token}": over, f"huge-{token}": huge}
    frames = []
    for n in range(2000):
        rid = f"t{n}-{token}"
        good[rid] = b'{"call_id":"c","component":"x","metric":"m","value":%d}' % n
        frames.append(_send_frame(sq, good[rid], rid, len(frames)))
        if n in (500, 1000, 1500):
            for rid, body in ((f"exact-{token}", exact), *bad.items()):
                frames.append(_send_frame(sq, body, rid, len(frames)))
    _raw_stomp_send(activemq.host, frames)
    server = standalone(broker={"max_body_bytes": limit})
    server.start()
    assert_exactly_once(pg_url, set(good), timeout_s=90)
    assert _rejected_counts(pg_url, sorted(good) + sorted(bad)) == dict.fromkeys(bad, 1)
    payload = _payload_texts(pg_url, [f"exact-{token}"])[f"exact-{token}"]
    assert payload == json.loads(exact)
    for row in _rows(pg_url, rejected_reports, sorted(bad)):
        assert bytes(row.raw) == bad[row.report_id][:limit], row.report_id


# -- 4. a pooled connection pinged only after a second idle ---------------------------------------


def _proxied(db_url: str, proxy: TcpProxy) -> str:
    return make_url(db_url).set(port=proxy.port).render_as_string(hide_password=False)


def _database_port(db_url: str) -> int:
    port = make_url(db_url).port
    assert port is not None
    return port


def _no_good_rejected(db_url: str, ids: set[str]) -> None:
    rejected = _rejected_counts(db_url, sorted(ids))
    assert not rejected, f"receipted reports in rejected_reports: {sorted(rejected)[:5]}"


@on_databases(mariadb_marks=pytest.mark.mariadb)
@pytest.mark.timeout(240)
def test_database_connections_torn_down_at_intervals_around_the_idle_ping(
    standalone, db_url, flowing
) -> None:
    """While reports flow, every connection to the database (the drainer's and /status's) torn
    down with a TCP RST through the proxy, the database itself up, at intervals around the one
    second after which a pooled connection is pinged (0.2 s to 2.5 s): every receipted report
    stored once, none rejected, the journal drained and /status saying database: up."""
    proxy = TcpProxy("127.0.0.1", _database_port(db_url)).start()
    try:
        server = standalone(database={"url": _proxied(db_url, proxy)})
        server.start()
        flow = flowing([server], count=2400, rate=200, stored=100)
        for interval in (0.2, 0.5, 0.9, 1.0, 1.05, 1.1, 1.5, 0.3, 2.5, 0.95):
            time.sleep(interval)  # the fault schedule, not a wait for a condition
            proxy.reset()
        ids = flow.join()
        assert_exactly_once(db_url, ids, timeout_s=90)
        _no_good_rejected(db_url, ids)
        wait_until(lambda: server.status()["journal"]["pending"] == 0, 60, "the journal drained")
        wait_until(lambda: server.status()["database"] == "up", 30, "database: up")
    finally:
        proxy.stop()


@on_databases(mariadb_marks=pytest.mark.mariadb)
@pytest.mark.timeout(240)
def test_database_killed_and_restarted_between_and_in_batches(
    standalone, database, db_url, flowing
) -> None:
    """While reports flow, the database killed -9 and restarted three times, the gaps between
    a restart and the next kill 0.5, 1.0 and 1.5 s (a connection made after the restart used
    within the idle second): every receipted report stored once, none rejected, /status up."""
    server = standalone()
    server.start()
    flow = flowing([server], count=2400, rate=200, stored=100)
    for gap in (0.5, 1.0, 1.5):
        database.kill()
        database.restart()
        time.sleep(gap)  # the fault schedule
    ids = flow.join()
    assert_exactly_once(db_url, ids, timeout_s=120)
    _no_good_rejected(db_url, ids)
    wait_until(lambda: server.status()["database"] == "up", 60, "database: up")
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 60, "the journal drained")


@pytest.mark.timeout(240)
def test_database_paused_then_resumed_while_reports_flow(
    standalone, postgres, pg_url, flowing
) -> None:
    """PostgreSQL stopped with SIGSTOP for 0.8 s, then 1.2 s, then 4 s while reports flow, resumed
    each time: every receipted report stored once, none rejected, /status up again."""
    server = standalone()
    server.start()
    flow = flowing([server], count=2000, rate=200, stored=100)
    try:
        for pause in (0.8, 1.2, 4.0):
            postgres.pause()
            try:
                time.sleep(pause)  # the fault's length
            finally:
                postgres.resume()
            time.sleep(0.5)
    finally:
        if postgres.is_paused():
            postgres.resume()
    ids = flow.join()
    assert_exactly_once(pg_url, ids, timeout_s=120)
    _no_good_rejected(pg_url, ids)
    wait_until(lambda: server.status()["database"] == "up", 60, "database: up")


@pytest.mark.timeout(240)
def test_database_path_dark_for_a_moment_then_healed(standalone, pg_url, flowing) -> None:
    """The path to PostgreSQL dark (nothing either way, connections open) for 0.9 s and 1.5 s
    while reports flow, then healed; then dark again and its connections reset: every receipted
    report stored once, none rejected, /status up again."""
    proxy = TcpProxy("127.0.0.1", _database_port(pg_url)).start()
    try:
        server = standalone(database={"url": _proxied(pg_url, proxy)})
        server.start()
        flow = flowing([server], count=2000, rate=200, stored=100)
        for dark in (0.9, 1.5):
            proxy.blackhole()
            time.sleep(dark)  # the fault's length
            proxy.heal()
            time.sleep(1.0)
        proxy.blackhole()
        time.sleep(1.0)
        proxy.reset()
        proxy.heal()
        ids = flow.join()
        assert_exactly_once(pg_url, ids, timeout_s=120)
        _no_good_rejected(pg_url, ids)
        wait_until(lambda: server.status()["database"] == "up", 60, "database: up")
    finally:
        proxy.stop()


def test_sent_after_an_idle_spell_behind_a_dropped_connection(standalone, pg_url, send_all) -> None:
    """A few reports stored, then the drainer idle for 1.5 s (past the ping's second) while its
    connections are torn down, then more: stored at once, no outage seen; then the same with the
    connections torn down 0.3 s after the last batch (within the second)."""
    proxy = TcpProxy("127.0.0.1", _database_port(pg_url)).start()
    try:
        server = standalone(database={"url": _proxied(pg_url, proxy)})
        server.start()
        wait_until(lambda: server.status()["broker"] == "connected", 30, "subscribed")
        everything: set[str] = set()
        for n, idle in enumerate((1.5, 0.3, 0.05, 1.5)):
            ids = send_all(20, ledger=f"ledger-{n}")
            everything |= ids
            assert_exactly_once(pg_url, everything, timeout_s=60)
            time.sleep(idle)  # the idle spell this case is about
            proxy.reset()
        ids = send_all(20, ledger="ledger-last")
        everything |= ids
        assert_exactly_once(pg_url, everything, timeout_s=60)
        _no_good_rejected(pg_url, everything)
        wait_until(lambda: server.status()["database"] == "up", 30, "database: up")
    finally:
        proxy.stop()
