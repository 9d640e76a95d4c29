"""The typed columns a journal record carries: the COPY row the drain makes from them is the one
it would make from the payload, for any payload (wrong types, long text, integers beyond 64
bits, times with any offset); a record without them (written by an earlier version, or holding
an integer orjson cannot write) is read from the payload."""

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from storage.database.insert import copy_values
from storage.reports import FIELDS, TYPED_COLUMNS, Report, from_record, to_record

NOW = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
FIELD_NAMES = sorted({f.name for fields in FIELDS.values() for f in fields})
times = st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat)
anything = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=600)
    | times
    | st.lists(st.integers(), max_size=2)
)


@st.composite
def reports(draw: st.DrawFn) -> Report:
    kind = draw(st.sampled_from(sorted(FIELDS)))
    payload = draw(st.dictionaries(st.sampled_from(FIELD_NAMES), anything, max_size=12))
    body = json.dumps(payload)
    return Report(
        f"id-{draw(st.integers(0, 99))}", kind, f"gvp.reporting.{kind}", payload, NOW, body
    )


@settings(max_examples=400, deadline=None)
@given(reports())
def test_copy_rows_from_the_records_columns_are_the_payloads(report: Report) -> None:
    back = from_record(to_record(report))
    assert back == report
    assert copy_values([back]) == copy_values([report])


def test_a_record_carries_the_columns() -> None:
    payload = {"call_id": "c-1", "start": "2024-01-01T01:00:00+01:00", "arrivals": 3}
    report = Report("r-1", "cdr", "gvp.reporting.cdr", payload, NOW, json.dumps(payload))
    back = from_record(to_record(report))
    assert back.columns is not None
    columns = dict(zip(TYPED_COLUMNS, back.columns, strict=True))
    assert columns["call_id"] == "c-1" and columns["arrivals"] == 3
    assert columns["started_at"] == "2024-01-01T00:00:00+00:00"


def test_an_integer_beyond_64_bits_leaves_the_columns_to_the_payload() -> None:
    payload = {"call_id": "c-1", "arrivals": 1 << 70}
    report = Report("r-1", "cdr", "gvp.reporting.cdr", payload, NOW, json.dumps(payload))
    back = from_record(to_record(report))
    assert back.columns is None and back.payload["arrivals"] == 1 << 70
    assert copy_values([back])[0][TYPED_COLUMNS.index("arrivals") + 5] == 1 << 70


def test_a_record_from_before_the_columns_is_read_from_its_payload() -> None:
    payload = {"call_id": "c-1", "start": "2024-01-01T00:00:00+00:00"}
    head = {"t": "R", "id": "r-1", "k": "cdr", "q": "gvp.reporting.cdr", "at": NOW.isoformat()}
    record = json.dumps(head, separators=(",", ":")).encode()[:-1] + b',"p":'
    record += json.dumps(payload).encode() + b"}"
    back = from_record(record)
    assert back.columns is None
    report = Report("r-1", "cdr", "gvp.reporting.cdr", payload, NOW, json.dumps(payload))
    assert copy_values([back]) == copy_values([report])
