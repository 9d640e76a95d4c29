"""A wire fuzzer through the real broker: hostile frames interleaved with valid, receipted reports.

Hypothesis (seeded, bounded) builds the hostile frames; a plain stomp.py connection sends them
with receipts to a running standalone server on PostgreSQL. At the end every valid report is
stored once, every hostile one is in `rejected_reports` once with a reason, the server still
consumes, and its memory stayed bounded.
"""

import json
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import stomp
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, select

from reporting.harness.flow import assert_exactly_once
from reporting.harness.waiting import wait_until
from reporting.samples import sample_report
from reporting.wire.decode import MAX_DEPTH, body_id
from reporting.wire.producer import ReportClient
from storage.database.schema import rejected_reports
from storage.reports import FIELDS, KINDS

pytestmark = pytest.mark.integration

MAX_BODY_BYTES = 1 << 20  # the server's default, named in the config below
EXAMPLES = 150
# Large bodies: 1.1 to 3 MB, every one over MAX_BODY_BYTES.
LARGE = (MAX_BODY_BYTES + (100 << 10), 3 << 20)


class Frame:
    """One hostile frame and how its rejected row is found: by its report-id, by the hash of its
    body (a bad id), or by its raw bytes (an empty id: the broker's message-id stands in)."""

    def __init__(self, what: str, kind: str, body: bytes, report_id: str, key: str) -> None:
        self.what, self.kind, self.body, self.report_id, self.key = what, kind, body, report_id, key
        self.headers: dict[str, str] = {"report-id": report_id}

    def expected_id(self) -> str | None:
        return {"id": self.report_id, "hash": body_id(self.body), "raw": None}[self.key]


def valid(kind: str, token: str) -> dict[str, Any]:
    report = sample_report(kind, random.Random(token))
    report["token"] = token  # makes each body, and so its hash, unique
    return report


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


# Per kind and required field: values of the wrong type or out of range.
WRONG = {
    "text": [None, 7, 1.5, True, [], {}, "", "   "],
    "time": [None, 0, "yesterday", "2024-13-45T99:00:00", [], "12:00 tomorrow"],
    "count": [-1, 1.5, "3", True, None, 1 << 63, 10**30],
    "number": ["1.0", None, True, [], {}],
}
FIELD_TYPE = {"arrivals": "count", "peak": "count", "value": "number"}
FIELD_TYPE |= {f: "time" for f in ("start", "end", "interval_start", "at")}


@st.composite
def hostile_frames(draw: st.DrawFn) -> Frame:
    kind = draw(st.sampled_from(KINDS))
    token = uuid.uuid4().hex
    rid = f"hostile-{token}"
    what = draw(
        st.sampled_from(
            [
                "invalid-utf8",
                "empty-body",
                "large-body",
                "deep-json",
                "huge-number",
                "nan",
                "duplicate-keys",
                "wrong-type",
                "control-chars-in-id",
                "empty-id",
                "long-id",
                "not-an-object",
                "nul-escape",
            ]
        )
    )
    good = valid(kind, token)
    if what == "invalid-utf8":
        raw = dumps(good)
        # A fraction, not an index: the body's length varies with its token, the draws must not.
        at = int(draw(st.floats(0, 1)) * len(raw))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]))
        return Frame(what, kind, raw[:at] + bad + raw[at:], rid, "id")
    if what == "empty-body":
        return Frame(what, kind, b"", rid, "id")
    if what == "large-body":
        size = draw(st.integers(*LARGE))
        good["pad"] = "x" * size
        return Frame(what, kind, dumps(good), rid, "id")
    if what == "deep-json":
        depth = draw(st.integers(MAX_DEPTH + 1, 50_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        nested = (opener * depth + "1" + closer * depth).encode()
        return Frame(what, kind, dumps(good)[:-1] + b', "deep": ' + nested + b"}", rid, "id")
    if what == "huge-number":
        text = draw(st.sampled_from(["1e400", "-1e999", "9" * 5000, str(1 << 64)]))
        field = {"or": "arrivals", "sq": "value"}.get(kind)
        if field is None or (kind == "sq" and text == str(1 << 64)):
            text = draw(st.sampled_from(["1e400", "9" * 5000]))
            field = "huge"
        body = dumps({k: v for k, v in good.items() if k != field})[:-1]
        return Frame(what, kind, body + f', "{field}": {text}}}'.encode(), rid, "id")
    if what == "nan":
        constant = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        return Frame(what, kind, dumps(good)[:-1] + f', "x": {constant}}}'.encode(), rid, "id")
    if what == "duplicate-keys":
        name = draw(st.sampled_from([field.name for field in FIELDS[kind]]))
        # Both values valid: which one a parser keeps is exactly the ambiguity refused here.
        body = dumps(good)[:-1] + f", {json.dumps(name)}: {json.dumps(good[name])}}}".encode()
        return Frame(what, kind, body, rid, "id")
    if what == "wrong-type":
        name = draw(st.sampled_from([field.name for field in FIELDS[kind]]))
        good[name] = draw(st.sampled_from(WRONG[FIELD_TYPE.get(name, "text")] + ["<missing>"]))
        if good[name] == "<missing>":
            del good[name]
        return Frame(what, kind, dumps(good), rid, "id")
    if what == "control-chars-in-id":
        control = draw(st.sampled_from(["\x01", "\x07", "\x1b[31m", "\x7f", "\r", "\n", "\t"]))
        return Frame(what, kind, dumps(good), f"id{control}{token}", "hash")
    if what == "empty-id":
        return Frame(what, kind, b"\xff" + token.encode(), "", "raw")
    if what == "long-id":
        return Frame(what, kind, dumps(good), "L" * 10_000, "hash")
    if what == "not-an-object":
        body = draw(st.sampled_from([f"[{json.dumps(token)}]", json.dumps(token), "null", "{"]))
        return Frame(what, kind, body.encode(), rid, "id")
    assert what == "nul-escape"
    escape = draw(st.sampled_from(["\\u0000", "\\ud800"]))
    body = dumps(good)[:-1] + f', "x": "a{escape}b"}}'.encode()
    return Frame(what, kind, body, rid, "id")


class Receipts(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.done: dict[str, threading.Event] = {}
        self.errors: list[str] = []

    def on_receipt(self, frame: Any) -> None:
        self.done[frame.headers["receipt-id"]].set()

    def on_error(self, frame: Any) -> None:
        self.errors.append(str(frame.headers.get("message")))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_hostile_frames_never_win(
    standalone, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    server = standalone(broker={"max_body_bytes": MAX_BODY_BYTES})
    server.start()
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    pid = server.pid
    rss_start = rss_kib(pid)
    rss_peak = rss_start

    host, port = activemq.host.rsplit(":", 1)
    hostile = stomp.Connection12([(host, int(port))], auto_decode=False)
    receipts = Receipts()
    hostile.set_listener("receipts", receipts)
    hostile.connect(wait=True)
    good = ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20)
    sent: list[Frame] = []

    @seed(20261126)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        # Each example has side effects on a live server: nothing to shrink or replay.
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        frame=hostile_frames(),
        valid_kind=st.sampled_from(KINDS),
        # Valid ids that would do harm if anything built SQL, a path or a command from them.
        valid_id=st.sampled_from(
            ["valid-{}", "'; DROP TABLE reports; --{}", "../../../../tmp/{}", "$(touch /tmp/{})"]
        ),
    )
    def send(frame: Frame, valid_kind: str, valid_id: str) -> None:
        nonlocal rss_peak
        receipt = f"h{len(sent)}"
        receipts.done[receipt] = threading.Event()
        headers = {**frame.headers, "persistent": "true", "receipt": receipt}
        destination = f"/queue/{queue_prefix}gvp.reporting.{frame.kind}"
        hostile.send(destination, frame.body, headers=headers)
        assert receipts.done[receipt].wait(30), f"no receipt for {frame.what}: {receipts.errors}"
        sent.append(frame)
        token = uuid.uuid4().hex
        good.send_raw(
            f"/queue/{queue_prefix}gvp.reporting.{valid_kind}",
            dumps(valid(valid_kind, token)),
            report_id=valid_id.format(token),
            # Control characters in other headers are no reason to refuse a good report.
            headers={"x-note": "tab\there\x01"},
        )
        rss_peak = max(rss_peak, rss_kib(pid))

    send()
    good.flush()
    good.close()
    hostile.disconnect()
    assert not receipts.errors

    ledger_ids = {line for line in (tmp_path / "ledger").read_text().splitlines() if line}
    assert len(ledger_ids) == len(sent) >= EXAMPLES
    assert_exactly_once(pg_url, ledger_ids)

    engine = create_engine(pg_url)
    by_id = [f for f in sent if f.key != "raw"]
    by_raw = [f for f in sent if f.key == "raw"]

    def rejected_rows() -> list[Any]:
        with engine.connect() as conn:
            table = rejected_reports
            return list(conn.execute(select(table.c.report_id, table.c.reason, table.c.raw)))

    def missing() -> list[str]:
        rows = rejected_rows()
        ids = {row.report_id for row in rows}
        raws = {bytes(row.raw) for row in rows}
        return [f.what for f in by_id if f.expected_id() not in ids] + [
            f.what for f in by_raw if f.body not in raws
        ]

    try:
        wait_until(lambda: not missing(), 60, "every hostile frame to be rejected", every_s=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; not rejected: {sorted(missing())}") from None
    rows = rejected_rows()
    engine.dispose()
    expected = {f.expected_id() for f in by_id}
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.report_id] = counts.get(row.report_id, 0) + 1
        assert row.reason, row
        assert len(row.raw) <= MAX_BODY_BYTES
    assert {i: n for i, n in counts.items() if i in expected and n != 1} == {}
    raws = [bytes(row.raw) for row in rows]
    assert all(raws.count(f.body) == 1 for f in by_raw)
    # Nothing but the hostile frames was rejected: every valid report was stored instead.
    assert len(rows) == len(sent)
    assert {f.what for f in sent} >= {"large-body", "deep-json", "duplicate-keys", "empty-id"}

    # Still running and still consuming.
    assert server.is_running()
    assert server.status()["role"] == "active"
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the consumer connected")
    with ReportClient([activemq.host], ledger=tmp_path / "after") as client:
        body = dumps(valid("cdr", "after"))
        client.send_raw(f"/queue/{queue_prefix}gvp.reporting.cdr", body, report_id="after-1")
        client.flush()
    assert_exactly_once(pg_url, {"after-1"})

    # The bound: the process at rest, plus at most a few large bodies in flight at once, each
    # held as the frame stomp.py read, the body bytes and the journal's record (truncated to
    # max_body_bytes): 4 copies of the largest body per message, 4 messages in flight.
    bound_kib = rss_start + 4 * 4 * LARGE[1] // 1024 + 64 * 1024
    print(f"RSS start {rss_start} KiB, peak {rss_peak} KiB, bound {bound_kib} KiB")
    assert rss_peak < bound_kib
    assert rss_kib(pid) < bound_kib
