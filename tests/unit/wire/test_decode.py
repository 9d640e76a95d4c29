"""decode: every rule of "Reports on the wire", and the rejections that keep the drainer moving."""

import json
from datetime import UTC, datetime

import pytest

from reporting.wire.decode import MAX_DEPTH, body_id, decode
from storage.reports import (
    DEFAULT_QUEUES,
    FIELDS,
    MAX_TEXT_CHARS,
    Rejected,
    Report,
    from_record,
    to_record,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LIMIT = 4096

VALID = {
    "cdr": {
        "call_id": "c-1",
        "component": "mcp-1",
        "tenant": "acme",
        "ivr_profile": "main",
        "start": "2024-05-01T11:59:00+00:00",
        "end": "2024-05-01T12:00:00Z",
    },
    "or": {"component": "rm-1", "interval_start": "2024-05-01T12:00:00", "arrivals": 3, "peak": 0},
    "sq": {"call_id": "c-2", "component": "mcp-2", "metric": "mos", "value": 4.2},
    "events": {"call_id": "c-3", "component": "mcp-3", "event": "hangup", "at": "2024-05-01"},
}


def run(kind="cdr", body=None, headers=None, destination=None, queues=DEFAULT_QUEUES, limit=LIMIT):
    if body is None:
        body = json.dumps(VALID[kind]).encode()
    if headers is None:
        headers = {"report-id": "r-1", "message-id": "ID:broker-1:1"}
    if destination is None:
        destination = f"/queue/gvp.reporting.{kind}"
    return decode(destination, headers, body, queues=queues, max_body_bytes=limit, now=NOW)


def rejected(**kwargs) -> Rejected:
    item = run(**kwargs)
    assert isinstance(item, Rejected), item
    # A rejected message must survive the journal encoding, whatever its bytes.
    assert from_record(to_record(item)) == item
    return item


@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_report_of_each_kind(kind):
    body = json.dumps(VALID[kind])
    item = run(kind, body=body.encode())
    assert item == Report("r-1", kind, f"gvp.reporting.{kind}", VALID[kind], NOW, body)
    # The producer's text travels through the journal unchanged, beside the parsed payload.
    assert from_record(to_record(item)) == item


def test_extra_fields_are_kept():
    payload = dict(VALID["sq"], site="paris", tags=["a", {"b": None}], value=7)
    item = run("sq", body=json.dumps(payload).encode())
    assert isinstance(item, Report) and item.payload == payload


def test_message_id_stands_in_for_a_missing_report_id():
    assert run(headers={"message-id": "ID:b:7"}).report_id == "ID:b:7"
    assert run(headers={"report-id": "", "message-id": "ID:b:7"}).report_id == "ID:b:7"


def test_no_id_at_all_is_rejected_with_a_body_hash():
    body = b'{"call_id": 1}'
    item = rejected(body=body, headers={})
    assert item.report_id == body_id(body)
    assert "report-id" in item.reason


@pytest.mark.parametrize(
    "bad_id", ["x" * 201, "a\nb", "a\x00b", "tab\there", "   ", "ord-42-\ufffd"]
)
def test_unusable_report_id_is_rejected(bad_id):
    item = rejected(headers={"report-id": bad_id})
    assert item.report_id.startswith("body-sha256:")
    assert "report-id" in item.reason


def test_report_id_of_200_printable_characters_is_fine():
    assert run(headers={"report-id": "é" * 200}).report_id == "é" * 200


@pytest.mark.parametrize(
    "destination",
    [
        "/queue/gvp.reporting.xyz",
        "/topic/gvp.reporting.cdr",
        "gvp.reporting.cdr",
        "/queue/other",
        "/queue/gvp.reporting.",
        "",
        "/queue/\x00\ud800",
    ],
)
def test_unknown_destination(destination):
    item = rejected(destination=destination)
    assert item.reason.startswith("unknown destination")
    assert item.report_id == "r-1"
    assert item.queue.isprintable()


def test_site_prefixed_queue_takes_its_kind_from_the_last_part():
    queues = ("site1.gvp.reporting.sq", "site1.gvp.reporting.cdr")
    item = run("sq", destination="/queue/site1.gvp.reporting.sq", queues=queues)
    assert isinstance(item, Report) and (item.kind, item.queue) == ("sq", queues[0])
    assert run("sq", queues=queues).reason.startswith("unknown destination")


def test_queue_not_configured_is_unknown():
    item = rejected(queues=("gvp.reporting.or",))
    assert item.reason.startswith("unknown destination")


def test_oversized_body_is_kept_truncated():
    body = json.dumps(dict(VALID["cdr"], pad="x" * LIMIT)).encode()
    item = rejected(body=body)
    assert item.raw == body[:LIMIT]
    assert str(len(body)) in item.reason and "truncated" in item.reason


def test_body_of_exactly_the_limit_is_fine():
    base = json.dumps(dict(VALID["cdr"], pad="")).encode()
    body = json.dumps(dict(VALID["cdr"], pad="x" * (LIMIT - len(base)))).encode()
    assert len(body) == LIMIT
    assert isinstance(run(body=body), Report)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"\xed\xa0\x80", "not UTF-8"),  # an encoded surrogate
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"call_id=1", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'"text"', "not an object"),
        (b"null", "not an object"),
        (b'{"value": NaN}', "not storable"),
        (b'{"value": -Infinity}', "not storable"),
        (b'{"value": 1e400}', "out of range"),
        (b'{"a": "\\u0000"}', "NUL"),
        (b'{"\\u0000": 1}', "NUL"),
        (b'{"a": ["\\ud800"]}', "surrogate"),
        (b"[" * 100000 + b"]" * 100000, "not"),
        (b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), "nested deeper"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not JSON"),
    ],
)
def test_bodies_that_are_not_storable_json_objects(body, words):
    item = rejected(body=body, limit=1 << 20)
    assert words in item.reason, item.reason


def test_escaped_text_that_is_fine_passes():
    payload = dict(VALID["events"], note="caf\u00e9 \U0001f600 \\u0000 literal")
    body = json.dumps(payload, ensure_ascii=True).encode()
    assert b"\\u" in body
    assert run("events", body=body).payload == payload


def test_nesting_up_to_the_limit_passes():
    nested: object = 1
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    payload = dict(VALID["events"], deep=nested)
    assert run("events", body=json.dumps(payload).encode()).payload == payload


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("cdr", "call_id", ""),
        ("cdr", "call_id", "  "),
        ("cdr", "tenant", 5),
        ("cdr", "ivr_profile", None),
        ("cdr", "start", "yesterday"),
        ("cdr", "end", 1714564800),
        ("or", "interval_start", "2024-13-01T00:00:00"),
        ("or", "arrivals", -1),
        ("or", "arrivals", 1.0),
        ("or", "peak", True),
        ("or", "peak", "3"),
        ("or", "peak", 1 << 63),
        ("sq", "value", "4.2"),
        ("sq", "value", False),
        ("sq", "value", None),
        ("sq", "metric", ["mos"]),
        ("events", "at", ""),
        ("events", "event", {}),
    ],
)
def test_wrong_field_type_names_the_field(kind, field, value):
    body = json.dumps(dict(VALID[kind], **{field: value})).encode()
    item = rejected(kind=kind, body=body)
    assert item.reason.startswith(f"field {field} ")


@pytest.mark.parametrize("kind", sorted(VALID))
def test_each_missing_field_is_named(kind):
    for field in VALID[kind]:
        payload = {k: v for k, v in VALID[kind].items() if k != field}
        item = rejected(kind=kind, body=json.dumps(payload).encode())
        assert item.reason == f"field {field} is missing ({kind} report)"


def test_large_counts_and_integer_values_pass():
    body = json.dumps(dict(VALID["or"], arrivals=(1 << 63) - 1)).encode()
    assert isinstance(run("or", body=body), Report)
    body = json.dumps(dict(VALID["sq"], value=-3)).encode()
    assert run("sq", body=body).payload["value"] == -3


def test_headers_of_wrong_types_do_not_raise():
    item = decode(
        "/queue/gvp.reporting.cdr",
        {"report-id": 5},  # type: ignore[dict-item]
        b"{}",
        queues=DEFAULT_QUEUES,
        max_body_bytes=LIMIT,
        now=NOW,
    )
    assert isinstance(item, Rejected)


@pytest.mark.parametrize(
    "body",
    [
        b'{"call_id": "c-1", "call_id": "c-2", "component": "m", "tenant": "t",'
        b' "ivr_profile": "p", "start": "2024-05-01", "end": "2024-05-01"}',
        # In a nested object too: its two readings would be stored as one payload.
        json.dumps(VALID["cdr"]).encode()[:-1] + b', "extra": {"a": 1, "a": 2}}',
    ],
)
def test_a_key_given_twice_is_rejected(body: bytes) -> None:
    result = run(body=body)
    assert isinstance(result, Rejected)
    assert "duplicate key" in result.reason and result.raw == body


BOUNDED = [(kind, f.name) for kind, fields in FIELDS.items() for f in fields if f.max_chars]


@pytest.mark.parametrize(("kind", "field"), BOUNDED)
def test_indexed_text_over_its_bound_is_rejected_before_the_database(kind, field):
    # 8 KB of random hex in a call_id once stopped all storage on PostgreSQL (issue 14).
    at_bound = json.dumps(dict(VALID[kind], **{field: "é" * MAX_TEXT_CHARS})).encode()
    assert isinstance(run(kind, body=at_bound, limit=1 << 20), Report)
    over = json.dumps(dict(VALID[kind], **{field: "a" * (MAX_TEXT_CHARS + 1)})).encode()
    item = rejected(kind=kind, body=over, limit=1 << 20)
    assert item.reason == (
        f"field {field} is longer than {MAX_TEXT_CHARS} characters ({MAX_TEXT_CHARS + 1})"
    )


def test_text_kept_only_in_the_payload_has_no_bound_but_the_body():
    body = json.dumps(dict(VALID["cdr"], ivr_profile="p" * 10_000, note="n" * 10_000)).encode()
    assert isinstance(run("cdr", body=body, limit=1 << 20), Report)
