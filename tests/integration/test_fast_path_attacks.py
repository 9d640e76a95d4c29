"""The C parser's shortcut, the typed columns journal records carry and the hand-written STOMP
frame parsing, attacked through the public interface: STOMP messages to a running server on
PostgreSQL, the journal it drains, kill -9 and restart.

What a body becomes is judged by the standard parser with decode's hooks (`json.loads`, as the
server parsed every body before the shortcut), and the typed columns by a copy of the contract
written out here, not by the server's own code.
"""

import base64
import json
import math
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import stomp
from sqlalchemy import Select, Table, bindparam, create_engine, select, text

from reporting.harness.flow import assert_exactly_once
from reporting.harness.waiting import holds_within, wait_until
from storage.database.schema import rejected_reports, reports
from storage.journal import Journal
from storage.reports import Rejected, Report
from tests.integration.test_hostile_input import Receipts
from tests.unit.storage.test_fast_path_rows import decode, record_before_columns

pytestmark = pytest.mark.integration

NOW = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
SQ = '{"call_id":"c","component":"x","metric":"m","value":%s%s}'
OR = '{"component":"x","interval_start":"2024-01-01T00:00:00+01:00","arrivals":%s,"peak":0%s}'
CDR = '{"call_id":"c","component":"x","tenant":"t","ivr_profile":"p","start":%s,"end":%s%s}'
EVENTS = '{"call_id":"c","component":"x","event":"e","at":%s%s}'

# (name, kind, body, stored?): bodies at the edges of what the shortcut may take.
CASES: list[tuple[str, str, str, bool]] = [
    ("dup-escaped-name", "sq", SQ % ("1", ',"\\u0076alue":2'), False),
    ("dup-blank-before-colon", "sq", SQ % ("1", ',"value" :2'), False),
    ("dup-tab-before-colon", "sq", SQ % ("1", ',"value"\t:2'), False),
    ("dup-lf-before-colon", "sq", SQ % ("1", ',"value"\n:2'), False),
    ("dup-crlf-before-colon", "sq", SQ % ("1", ',"value"\r\n:2'), False),
    ("dup-nested", "sq", SQ % ("1", ',"x":{"a":1,"a":1}'), False),
    ("dup-nested-in-list", "sq", SQ % ("1", ',"x":[{},{"a":[],"a":[]}]'), False),
    ("dup-unicode-escape", "sq", SQ % ("1", ',"x":{"\\u00e9":1,"\u00e9":1}'), False),
    ("dup-solidus-escape", "sq", SQ % ("1", ',"x":{"a\\/b":1,"a/b":1}'), False),
    ("dup-name-holding-quote-colon", "sq", SQ % ("1", ',"a\\":":1,"a\\":":2'), False),
    ("dup-after-quote-colon-in-value", "sq", SQ % ("1", ',"n":"\\":","value":3'), False),
    ("name-holding-quote-colon", "sq", SQ % ("1", ',"a\\":":1,"b":"\\":"'), True),
    ("value-2**64", "sq", SQ % ("18446744073709551616", ""), True),
    ("value-2**64-1", "sq", SQ % ("18446744073709551615", ""), True),
    ("value-2**63", "sq", SQ % ("9223372036854775808", ""), True),
    ("value-below-int64", "sq", SQ % ("-9223372036854775809", ""), True),
    ("value-10**300", "sq", SQ % ("1" + "0" * 300, ""), True),
    ("value-10**400", "sq", SQ % ("1" + "0" * 400, ""), True),
    ("value-4301-digits", "sq", SQ % ("1" * 4301, ""), False),
    ("nested-big-int", "sq", SQ % ("1", ',"x":[1,{"b":123456789012345678901234567890}]'), True),
    ("nested-big-negative", "sq", SQ % ("1", ',"x":[[-18446744073709551617]]'), True),
    ("big-float-literal", "sq", SQ % ("1.8446744073709552e19", ""), True),
    ("value-1e308", "sq", SQ % ("1e308", ""), True),
    ("value-past-max-double", "sq", SQ % ("1.7976931348623159e308", ""), False),
    ("value-1E400", "sq", SQ % ("1E400", ""), False),
    ("value-minus-1e400", "sq", SQ % ("-1e400", ""), False),
    ("value-underflow", "sq", SQ % ("2.4703282292062327e-324", ""), True),
    ("value-smallest", "sq", SQ % ("4.9406564584124654e-324", ""), True),
    ("value-minus-zero-int", "sq", SQ % ("-0", ""), True),
    ("value-minus-zero-float", "sq", SQ % ("-0.0", ""), True),
    ("value-long-mantissa", "sq", SQ % ("0." + "3" * 400, ""), True),
    ("value-exponent", "sq", SQ % ("1E2", ""), True),
    ("arrivals-minus-zero", "or", OR % ("-0", ""), True),
    ("arrivals-int64-max", "or", OR % ("9223372036854775807", ""), True),
    ("arrivals-int64-max-plus-1", "or", OR % ("9223372036854775808", ""), False),
    ("arrivals-2**64", "or", OR % ("18446744073709551616", ""), False),
    ("arrivals-float", "or", OR % ("1.0", ""), False),
    ("arrivals-exponent", "or", OR % ("1e0", ""), False),
    ("nan", "sq", SQ % ("1", ',"x":NaN'), False),
    ("infinity-nested", "sq", SQ % ("1", ',"x":[{"y":Infinity}]'), False),
    ("minus-infinity", "sq", SQ % ("-Infinity", ""), False),
    ("lone-high-surrogate-name", "sq", SQ % ("1", ',"x":{"\\ud800":1}'), False),
    ("lone-low-surrogate", "sq", SQ % ("1", ',"x":"\\udc00"'), False),
    ("reversed-pair", "sq", SQ % ("1", ',"x":"\\ude00\\ud83d"'), False),
    ("escaped-pair", "sq", SQ % ("1", ',"x":"\\ud83d\\ude00"'), True),
    ("nul-escape-name", "sq", SQ % ("1", ',"x":[{"a\\u0000":1}]'), False),
    ("bom", "sq", "\ufeff" + SQ % ("1", ""), False),
    ("bom-in-string", "sq", SQ % ("1", ',"x":"\ufeff"'), True),
    ("blanks-around", "sq", " \t\r\n" + SQ % ("1", "") + "\r\n\t ", True),
    ("form-feed", "sq", SQ % ("1", "") + "\f", False),
    ("vertical-tab", "sq", "\v" + SQ % ("1", ""), False),
    ("nbsp", "sq", SQ % ("1", "") + "\u00a0", False),
    ("line-separator", "sq", SQ % ("1", "\u2028"), False),
    ("raw-tab-in-string", "sq", SQ % ("1", ',"x":"a\tb"'), False),
    ("raw-del-in-string", "sq", SQ % ("1", ',"x":"a\x7fb"'), True),
    ("trailing-comma", "sq", SQ % ("1", ","), False),
    ("deep-32", "sq", SQ % ("1", ',"x":' + "[" * 31 + "]" * 31), True),
    ("deep-33", "sq", SQ % ("1", ',"x":' + "[" * 32 + "]" * 32), False),
    ("brackets-in-strings", "sq", SQ % ("1", ',"x":"' + "[{" * 40 + '"'), True),
    (
        "times-odd-offsets",
        "cdr",
        CDR % ('"2024-02-29T23:59:59.999999-23:59"', '"2024-01-01T00:00:00Z"', ""),
        True,
    ),
    ("times-overflow", "cdr", CDR % ('"0001-01-01T00:30:00+01:00"', '"2024-01-01"', ""), True),
    (
        "times-extreme-years",
        "cdr",
        CDR % ('"0010-05-05T00:00:00.000001"', '"9999-12-31T23:59:59.999999+00:00"', ""),
        True,
    ),
    ("time-overflow-at", "events", EVENTS % ('"9999-12-31T23:59:59-00:01"', ""), True),
    (
        "events-extra-columns",
        "events",
        EVENTS % ('"2024-01-01T10:00:00+02:00"', ',"tenant":"t","metric":"m","value":-0'),
        True,
    ),
    (
        "events-long-tenant",
        "events",
        EVENTS % ('"2024-01-01"', ',"tenant":"' + "t" * 513 + '"'),
        True,
    ),
    (
        "call-id-512-emoji",
        "sq",
        SQ.replace('"c"', '"' + "\U0001f600" * 512 + '"') % ("1", ""),
        True,
    ),
]

_TEXT = ("call_id", "component", "tenant", "metric")
_TIMES = {
    "cdr": (("start", "started_at"), ("end", "ended_at")),
    "or": (("interval_start", "interval_start"),),
    "events": (("at", "started_at"),),
}


def expected_columns(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The typed columns the contract gives a payload, written out independently."""
    columns: dict[str, Any] = {}
    for name in _TEXT:
        value = payload.get(name)
        columns[name] = value if isinstance(value, str) and len(value) <= 512 else None
    for name in ("arrivals", "peak"):
        value = payload.get(name)
        columns[name] = value if type(value) is int else None
    value = payload.get("value")
    try:
        columns["value"] = float(value) if type(value) in (int, float) else None
    except OverflowError:
        columns["value"] = None
    for column in ("started_at", "ended_at", "interval_start"):
        columns[column] = None
    for field, column in _TIMES.get(kind, ()):
        try:
            at = datetime.fromisoformat(payload[field])
            columns[column] = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        except (ValueError, OverflowError):
            columns[column] = None
    return columns


def standard_decision(kind: str, body: bytes) -> bool:
    """Whether decode, parsing with `json.loads` and its hooks alone, takes the body."""
    return isinstance(decode(kind, body, "r", shortcut=False), Report)


def select_by_id(table: Table, column: str) -> Select:
    """(report_id, column) of the rows whose id is in the bound list "ids"."""
    return select(table.c.report_id, table.c[column]).where(
        table.c.report_id.in_(bindparam("ids", expanding=True))
    )


def send_bodies(host: str, messages: list[tuple[str, bytes, dict[str, str]]]) -> None:
    """Sends each (destination, body, headers) with a receipt, waiting for each."""
    address, port = host.rsplit(":", 1)
    conn = stomp.Connection12([(address, int(port))], auto_decode=False)
    receipts = Receipts()
    conn.set_listener("receipts", receipts)
    conn.connect(wait=True)
    try:
        for n, (destination, body, headers) in enumerate(messages):
            receipt = f"r{n}"
            receipts.done[receipt] = threading.Event()
            conn.send(
                destination, body, headers={**headers, "persistent": "true", "receipt": receipt}
            )
            assert receipts.done[receipt].wait(30), f"no receipt: {receipts.errors}"
    finally:
        conn.disconnect()
    assert not receipts.errors


def test_edge_bodies_end_as_the_standard_parser_decides(
    standalone, activemq, pg_url, queue_prefix
) -> None:
    for name, kind, body, stored in CASES:
        assert standard_decision(kind, body.encode()) == stored, name
    server = standalone()
    server.start()
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    token = uuid.uuid4().hex[:8]
    ids = {name: f"{name}-{token}" for name, _, _, _ in CASES}
    send_bodies(
        activemq.host,
        [
            (f"/queue/{queue_prefix}gvp.reporting.{kind}", body.encode(), {"report-id": ids[name]})
            for name, kind, body, _ in CASES
        ],
    )
    engine = create_engine(pg_url)
    wanted = set(ids.values())

    def landed() -> tuple[dict[str, Any], dict[str, int]]:
        with engine.connect() as conn:
            stored = {
                row.report_id: row
                for row in conn.execute(
                    select(reports).where(
                        reports.c.report_id.in_(bindparam("ids", expanding=True))
                    ),
                    {"ids": list(wanted)},
                )
            }
            refused: dict[str, int] = {}
            for (report_id,) in conn.execute(
                select(rejected_reports.c.report_id).where(
                    rejected_reports.c.report_id.in_(bindparam("ids", expanding=True))
                ),
                {"ids": list(wanted)},
            ):
                refused[report_id] = refused.get(report_id, 0) + 1
        return stored, refused

    wait_until(lambda: len(set(landed()[0]) | set(landed()[1])) == len(wanted), 60, "all landed")
    stored, refused = landed()
    problems = []
    with engine.connect() as conn:
        for name, kind, body, should_store in CASES:
            rid = ids[name]
            if not should_store:
                if rid in stored or refused.get(rid) != 1:
                    problems.append(f"{name}: stored, or not rejected once")
                continue
            if rid not in stored or rid in refused:
                problems.append(f"{name}: not stored (rejected {refused.get(rid, 0)}x)")
                continue
            row = stored[rid]
            same = conn.scalar(
                text("SELECT payload = CAST(:body AS jsonb) FROM reports WHERE report_id = :id"),
                {"body": body, "id": rid},
            )
            if not same:
                problems.append(f"{name}: payload {row.payload!r} is not the body's")
            want = expected_columns(kind, json.loads(body))
            got = {column: getattr(row, column) for column in want}
            for column, value in want.items():
                if isinstance(value, float) and isinstance(got[column], float):
                    equal = value == got[column] and math.copysign(1, value) == math.copysign(
                        1, got[column]
                    )
                else:
                    equal = value == got[column]
                if not equal:
                    problems.append(f"{name}: {column} {got[column]!r}, want {value!r}")
    engine.dispose()
    assert not problems, "\n".join(problems)


# -- a journal of records with and without typed columns, drained across kill -9 ----------------


def reencoded_record(report: Report) -> bytes:
    doc = {"t": "r", "id": report.report_id, "k": report.kind, "q": report.queue}
    doc |= {"p": report.payload, "at": report.received_at.isoformat()}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def rejected_record(item: Rejected) -> bytes:
    doc = {"t": "x", "id": item.report_id, "q": item.queue, "why": item.reason}
    doc |= {"raw": base64.b64encode(item.raw).decode(), "at": item.received_at.isoformat()}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def test_journal_of_old_and_new_records_drains_exactly_once_across_kill_9(
    standalone, pg_url, queue_prefix, flowing, tmp_path: Path
) -> None:
    server = standalone()
    journal_dir = Path(server.config["journal"]["dir"])
    queue = f"{queue_prefix}gvp.reporting.sq"
    old_ids: dict[str, dict[str, Any]] = {}
    records = []
    for n in range(6000):
        rid = f"old-{n}-{uuid.uuid4().hex[:6]}"
        payload = {"call_id": f"c{n}", "component": "x", "metric": "m", "value": n / 7}
        if n % 5 == 0:
            payload["big"] = 1 << 70  # read from the payload even where records carry columns
        body = json.dumps(payload)
        report = Report(rid, "sq", queue, payload, NOW, body)
        old_ids[rid] = payload
        records.append(reencoded_record(report) if n % 3 == 0 else record_before_columns(report))
        if n % 100 == 0:
            bad = Rejected(f"oldx-{n}", queue, "not JSON", b"\xff{", NOW)
            records.append(rejected_record(bad))
    with Journal(journal_dir, writer=server.config["name"]) as journal:
        for start in range(0, len(records), 500):
            journal.append_batch(records[start : start + 500])
    server.start()
    flow = flowing([server], count=6000, rate=1500, stored=200)
    server.kill()
    server.start()
    ledger_ids = flow.join()
    assert_exactly_once(pg_url, ledger_ids | set(old_ids))
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        rows = {
            row.report_id: row
            for row in conn.execute(
                select(reports.c.report_id, reports.c.call_id, reports.c.value).where(
                    reports.c.report_id.like("old-%")
                )
            )
        }
        rejected = conn.execute(
            text("SELECT report_id, count(*) FROM rejected_reports GROUP BY report_id")
        ).all()
    engine.dispose()
    assert {rid for rid, _ in rejected} >= {f"oldx-{n}" for n in range(0, 6000, 100)}
    assert all(count == 1 for _, count in rejected)
    wrong = [
        rid
        for rid, payload in old_ids.items()
        if (rows[rid].call_id, rows[rid].value) != (payload["call_id"], payload["value"])
    ]
    assert not wrong, wrong[:5]


def test_escaped_ids_and_framing_bytes_survive_the_broker_round_trip(
    standalone, activemq, pg_url, queue_prefix
) -> None:
    """Ids the broker sends escaped (colons, backslashes, what looks like an escape) are stored
    as the producer sent them; bodies holding NUL bytes, blank lines and CR LF (framed by
    content-length) are kept byte for byte."""
    server = standalone()
    server.start()
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    token = uuid.uuid4().hex[:8]
    good = '{"call_id":"c","component":"x","metric":"m","value":1}'
    ids = [
        f"ID:host-1:{token}:1:1",
        f"a\\c{token}",
        f"a\\\\c{token}",
        f"\\{token}\\",
        f"a\\n{token}",
        f"k:v\\c:{token}",
    ]
    destination = f"/queue/{queue_prefix}gvp.reporting.sq"
    messages = [(destination, good.encode(), {"report-id": rid}) for rid in ids]
    # Each after a blank line or CR LF would end the headers if the frame were split there.
    framing = {
        f"nul-{token}": b"{\x00}",
        f"blank-{token}": b"\n\n" + good.encode(),
        f"crlf-{token}": b"\r\n\r\n" + good.encode() + b"\r\n\r\n",
        f"nul-after-{token}": good.encode() + b"\x00\x00\n",
    }
    messages += [(destination, body, {"report-id": rid}) for rid, body in framing.items()]
    send_bodies(activemq.host, messages)
    stored = {f"blank-{token}", f"crlf-{token}", *ids}
    assert_exactly_once(pg_url, stored)
    engine = create_engine(pg_url)
    wanted = [*ids, *framing]

    def rejected_raws() -> dict[str, Any]:
        with engine.connect() as conn:
            query = select_by_id(rejected_reports, "raw")
            return dict(conn.execute(query, {"ids": wanted}).all())

    # The last message sent is rejected: the good ones before it may be stored a batch before.
    holds_within(lambda: {f"nul-{token}", f"nul-after-{token}"} <= set(rejected_raws()), 30)
    rejected = rejected_raws()
    with engine.connect() as conn:
        bodies = dict(conn.execute(select_by_id(reports, "payload"), {"ids": wanted}).all())
    engine.dispose()
    assert set(bodies) == stored
    assert {rid: bytes(raw) for rid, raw in rejected.items()} == {
        f"nul-{token}": framing[f"nul-{token}"],
        f"nul-after-{token}": framing[f"nul-after-{token}"],
    }
