"""decode under hypothesis: never raises, and every valid report comes out unchanged."""

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from reporting.wire.decode import REASON_LABELS, decode, reason_label
from storage import reports

NOW = datetime(2024, 5, 1, tzinfo=UTC)


def decode_kind(
    kind: str, headers: dict[str, str], body: bytes, now: datetime = NOW
) -> reports.Report | reports.Rejected:
    """`body` as it arrives on the default queue of `kind`, with room for bodies up to 1 MiB."""
    return decode(
        f"/queue/gvp.reporting.{kind}",
        headers,
        body,
        queues=reports.DEFAULT_QUEUES,
        max_body_bytes=1 << 20,
        now=now,
    )


LIMIT = 2048

# Text a producer can legitimately send: no lone surrogates, no NULs (see decode's docstring).
clean_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))
non_blank = clean_text.filter(lambda s: s.strip() != "")
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | clean_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(clean_text, inner, max_size=4),
    max_leaves=12,
)
times = st.one_of(
    st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat),
    st.dates().map(lambda d: d.isoformat()),
)
counts = st.integers(min_value=0, max_value=(1 << 63) - 1)
numbers = st.integers(min_value=-(1 << 60), max_value=1 << 60) | st.floats(
    allow_nan=False, allow_infinity=False
)
FIELD_VALUES = {"start": times, "end": times, "interval_start": times, "at": times}
FIELD_VALUES |= {"arrivals": counts, "peak": counts, "value": numbers}
# Text copied into an indexed column has a bound.
FIELD_VALUES |= {
    f.name: non_blank.filter(lambda s: len(s) <= reports.MAX_TEXT_CHARS)
    for fields in reports.FIELDS.values()
    for f in fields
    if f.max_chars
}


@st.composite
def valid_reports(draw):
    kind = draw(st.sampled_from(sorted(reports.FIELDS)))
    payload = draw(st.dictionaries(clean_text, json_values, max_size=4))
    # Fields other kinds require, which are copied into the typed columns too (or not, when
    # they have the wrong type or length).
    others = st.sampled_from(sorted(FIELD_VALUES))
    for name in draw(st.lists(others, max_size=3)):
        payload[name] = draw(FIELD_VALUES[name] | json_values)
    for field in reports.FIELDS[kind]:
        payload[field.name] = draw(FIELD_VALUES.get(field.name, non_blank))
    return kind, payload


# U+FFFD is refused in an id: it stands where the broker found bytes that were not UTF-8.
printable_ids = st.text(
    st.characters(
        exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
        exclude_characters="\ufffd",
    ),
    min_size=1,
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(valid_reports(), printable_ids, st.booleans())
def test_valid_reports_decode_to_their_payload(report, report_id, ascii_only):
    kind, payload = report
    body = json.dumps(payload, ensure_ascii=ascii_only).encode("utf-8")
    item = decode_kind(kind, {"report-id": report_id}, body)
    assert isinstance(item, reports.Report), item
    assert (item.report_id, item.kind, item.payload) == (report_id, kind, payload)
    assert reports.from_record(reports.to_record(item)) == item
    # The typed columns, copied while the fields were checked, are what the payload gives.
    assert item.typed == reports.typed_values(kind, payload)


@st.composite
def mutated_reports(draw):
    """A valid report with one required field dropped or replaced by any JSON value."""
    kind, payload = draw(valid_reports())
    name = draw(st.sampled_from([field.name for field in reports.FIELDS[kind]]))
    if draw(st.booleans()):
        del payload[name]
    else:
        payload[name] = draw(json_values)
    return kind, name, payload


@settings(max_examples=200, deadline=None)
@given(mutated_reports())
def test_a_broken_field_is_named_in_the_reason(mutated):
    kind, name, payload = mutated
    item = decode_kind(kind, {"message-id": "ID:1"}, json.dumps(payload).encode())
    # The replacement may happen to be valid (any string for a name field, say).
    if isinstance(item, reports.Rejected):
        assert item.reason.startswith(f"field {name} "), item.reason
        assert not item.reason.endswith(" None"), item.reason
    else:
        assert item.payload == payload
        assert item.typed == reports.typed_values(kind, payload)


destinations = st.sampled_from([f"/queue/{q}" for q in reports.DEFAULT_QUEUES]) | st.text()
header_keys = st.sampled_from(["report-id", "message-id", "destination"]) | st.text()
any_text = st.text()  # includes surrogates and NULs on purpose


@settings(max_examples=300, deadline=None)
@given(
    destinations,
    st.dictionaries(header_keys, any_text, max_size=4),
    st.binary(max_size=LIMIT * 2)
    | st.text().map(lambda s: s.encode("utf-8", "surrogatepass"))
    | json_values.map(lambda v: json.dumps(v).encode())
    | mutated_reports().map(lambda m: json.dumps(m[2]).encode()),
)
def test_anything_decodes_without_raising_and_survives_the_journal(destination, headers, body):
    item = decode(
        destination, headers, body, queues=reports.DEFAULT_QUEUES, max_body_bytes=LIMIT, now=NOW
    )
    assert isinstance(item, reports.Report | reports.Rejected)
    assert reports.from_record(reports.to_record(item)) == item
    if isinstance(item, reports.Rejected):
        assert item.reason and item.report_id and item.report_id.isprintable()
        assert len(item.raw) <= LIMIT and body.startswith(item.raw)


def test_a_bug_in_decoding_is_a_rejected_message_however_it_is_called():
    class Broken(dict):
        def get(self, *args):
            raise RuntimeError("broken headers")

    body = json.dumps({"a": 1}).encode()
    queues, destination = reports.DEFAULT_QUEUES, "/queue/gvp.reporting.cdr"
    by_name = decode(destination, Broken(), body, queues=queues, max_body_bytes=LIMIT, now=NOW)
    by_position = decode(destination, Broken(), body, queues, LIMIT, NOW)
    for item in (by_name, by_position):
        assert isinstance(item, reports.Rejected)
        assert item.reason == "undecodable: RuntimeError" and item.raw == body
        assert item.received_at == NOW and item.queue == destination


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(reports.FIELDS)),
    headers=st.dictionaries(st.sampled_from(["report-id", "message-id"]), st.text(max_size=300)),
    body=st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
def test_every_rejection_has_a_label_from_the_fixed_set(
    kind: str, headers: dict[str, str], body: bytes
) -> None:
    """The rejected-reports metric's label set stays bounded whatever producers send: every
    reason decode gives has one of the fixed labels, never "other" nor its own text."""
    item = decode_kind(kind, headers, body)
    if isinstance(item, reports.Rejected):
        assert reason_label(item.reason) in {label for _, label in REASON_LABELS}, item.reason


def test_the_reasons_of_each_kind_of_rejection_have_their_own_labels() -> None:
    ok = {"report-id": "r-1"}
    cases = [
        ({}, b"{}", "no report id"),
        ({"report-id": "\x00"}, b"{}", "bad report id"),
        (ok, b"\xff", "body not UTF-8"),
        (ok, b"[1]", "body not a JSON object"),
        (ok, b"{", "body not JSON"),
        (ok, b"{}", "field missing or invalid"),
        (ok, b'{"a": "\\u0000"}', "body holds a NUL or lone surrogate"),
    ]
    for headers, body, label in cases:
        assert reason_label(decode_kind("cdr", headers, body).reason) == label, (body, label)
    assert reason_label("undecodable journal record") == "undecodable"
    assert reason_label("anything else") == "other"
