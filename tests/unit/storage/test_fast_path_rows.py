"""From the wire to the COPY row, the fast way and the standard way agree: a body decoded with the
C parser's shortcut, journalled with its typed columns and read back without its payload gives
the row that `json.loads` with decode's hooks, a record without columns and a full read give.
Bodies are report templates with hostile splices (names given twice in any spelling, numbers
past 64 bits or double range, escapes, blanks); ids and queues hold what looks like the record's
body key."""

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reporting.wire import decode as decoding
from storage.database.insert import copy_values
from storage.reports import Report, from_record, to_record

NOW = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=-7)))
TEMPLATES = {
    "sq": '{"call_id":"c","component":"x","metric":"m","value":%s%s}',
    "or": '{"component":"x","interval_start":%s,"arrivals":%s,"peak":%s%s}',
    "cdr": '{"call_id":"c","component":"x","tenant":"t","ivr_profile":"p","start":%s,"end":%s%s}',
    "events": '{"call_id":"c","component":"x","event":"e","at":%s,"value":%s%s}',
}
NUMBERS = [
    "0",
    "-0",
    "-0.0",
    "1",
    "1.5",
    "1e2",
    "1E-2",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "1" * 30,
    "1.8446744073709552e19",
    "1e308",
    "1.7976931348623159e308",
    "1e400",
    "2.4703282292062327e-324",
    "NaN",
    "-Infinity",
    '"1"',
    "true",
    "null",
    "[]",
    "{}",
    "01",
    "1.",
    ".5",
    "+1",
]
TIMES = [
    '"2024-01-01"',
    '"2024-01-01T00:00:00Z"',
    '"2024-02-29T23:59:59.999999-23:59"',
    '"0001-01-01T00:30:00+01:00"',
    '"9999-12-31T23:59:59-00:01"',
    '"2024-01-01T10:00:00+05:30:15"',
    '"not a time"',
    "1",
    '"2024-01-01T00:00:00\\u002b01:00"',
]
SPLICES = [
    ',"value":2',
    ',"\\u0076alue":2',
    ',"value" :2',
    ',"value"\t:2',
    ',"value"\r\n:2',
    ',"arrivals":1',
    ',"x":{"a":1,"a":1}',
    ',"x":{"\\u00e9":1,"\u00e9":1}',
    ',"x":"\\":"',
    ',"a\\":":1',
    ',"x":"\\ud800"',
    ',"x":"\\ud83d\\ude00"',
    ',"x":"\\u0000"',
    ',"x":NaN',
    ',"x":[18446744073709551616]',
    ',"tenant":"' + "t" * 513 + '"',
    ',"metric":7',
    "",
    ',"x":' + "[" * 32 + "]" * 32,
    ',"x":' + "[" * 31 + "]" * 31,
    " ",
    "\n",
    "\ufeff",
    "\f",
]
IDS = st.sampled_from(['r,"p":1', 'r\\",\\"p\\":', "r\u2028", 'r"}', "r\\c:é", "plain"])


# Per template, what goes in each hole before the last (which takes the splices).
HOLES = {"sq": (NUMBERS,), "or": (TIMES, NUMBERS, NUMBERS), "cdr": (TIMES, TIMES)}
HOLES["events"] = (TIMES, NUMBERS)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, str]:
    kind = draw(st.sampled_from(sorted(TEMPLATES)))
    values = [draw(st.sampled_from(choices)) for choices in HOLES[kind]]
    extra = "".join(draw(st.lists(st.sampled_from(SPLICES), max_size=3)))
    body = TEMPLATES[kind] % (*values, extra)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.sampled_from(SPLICES)) + body[cut:]
    return kind, body


def decode(kind: str, body: bytes, report_id: str, *, shortcut: bool) -> Any:
    saved = decoding._quick_parse
    if not shortcut:
        decoding._quick_parse = lambda body, text: None
    try:
        queue = f'q,"p":.gvp.reporting.{kind}'
        return decoding.decode(
            f"/queue/{queue}",
            {"report-id": report_id},
            body,
            queues=[queue],
            max_body_bytes=1 << 20,
            now=NOW,
        )
    finally:
        decoding._quick_parse = saved


def record_before_columns(report: Report) -> bytes:
    head = {"t": "R", "id": report.report_id, "k": report.kind, "q": report.queue}
    head["at"] = report.received_at.isoformat()
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
    assert report.body is not None
    return text[:-1] + b',"p":' + report.body.encode() + b"}"


@settings(max_examples=1500, deadline=None)
@given(bodies(), IDS)
def test_the_fast_way_gives_the_standard_ways_row(case: tuple[str, str], report_id: str) -> None:
    kind, text = case
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:
        return
    fast = decode(kind, body, report_id, shortcut=True)
    standard = decode(kind, body, report_id, shortcut=False)
    assert type(fast) is type(standard), text
    if not isinstance(standard, Report):
        assert fast.report_id == standard.report_id
        return
    # Same payload, types and the sign of zero included.
    assert json.dumps(fast.payload) == json.dumps(standard.payload), text
    drained = from_record(to_record(fast), payload=False)
    # As a record from before the columns, and as one whose payload was encoded again.
    before = from_record(record_before_columns(standard), payload=False)
    fields = (standard.report_id, standard.kind, standard.queue, standard.payload, NOW)
    reencoded = from_record(to_record(Report(*fields)), payload=False)
    want = copy_values([before])
    assert copy_values([drained]) == want, text
    assert copy_values([reencoded])[0][4:] == want[0][4:], text
    assert copy_values([from_record(to_record(fast))]) == want
    assert drained.received_at == NOW.astimezone(UTC)
