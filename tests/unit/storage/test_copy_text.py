"""The COPY text the drain writes in one call: byte for byte what psycopg's own row formatting
sends, or None where it cannot be made (and the rows go through psycopg one by one)."""

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg._copy_base import TextFormatter
from psycopg.adapt import Transformer

from storage.database.insert import CopyRows, copy_rows, copy_text
from storage.reports import Report


def psycopg_text(rows: list[list]) -> bytes:
    formatter = TextFormatter(Transformer())
    out = b"".join(bytes(formatter.write_row(row)) for row in rows)
    return out + bytes(formatter.end())


values = st.one_of(
    st.none(),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
    st.text(alphabet="\\\t\n\r\x0b\x1fa é\u2028"),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.lists(values, min_size=1, max_size=15), max_size=6))
def test_copy_text_is_what_psycopg_sends(rows: list[list]) -> None:
    assert copy_text(rows) == psycopg_text(rows)


def test_values_psycopg_formats_otherwise_are_its_text() -> None:
    for odd in (True, datetime.now(UTC), b"bytes"):
        assert copy_text([["id", odd]]) == psycopg_text([["id", odd]])


def test_values_psycopg_cannot_adapt_leave_the_rows_to_it() -> None:
    for odd in ({"a": 1}, "lone \ud800 surrogate"):
        assert copy_text([["id", odd]]) is None


def test_a_null_beside_a_backslash_is_escaped_right() -> None:
    # The quick check counts backslashes against NULLs: a value's backslash must not pass as one.
    rows = [["a\\", None, "b"], [None, "\\N", None]]
    assert copy_text(rows) == psycopg_text(rows)


def report(report_id: str) -> Report:
    at = datetime(2026, 12, 2, tzinfo=UTC)
    payload = {"call_id": "c", "component": "x", "started_at": "2026-12-02T00:00:00Z"}
    return Report(report_id, "cdr", "site.gvp.reporting.cdr", payload, at, json.dumps(payload))


def test_rows_and_text_stay_one_a_report() -> None:
    # A part of the rows must be the same part of the batch's reports: the sink splits both at
    # one index to find a refused row. A report sent twice goes to the database twice too.
    rows = copy_rows([report("a"), report("b"), report("a")])
    assert [row[0] for row in rows.rows] == ["a", "b", "a"]
    assert rows.text == psycopg_text(rows.rows)
    assert rows[:1] == CopyRows(rows.rows[:1]) and rows[:1].text is None


def test_joined_rows_keep_their_text() -> None:
    # The drainer joins a read-ahead batch and the records appended after it: the joined batch
    # must still go in as one COPY text, the text of all its rows.
    first, second = copy_rows([report("a"), report("b")]), copy_rows([report("c")])
    joined = CopyRows.join([first, second])
    assert [row[0] for row in joined.rows] == ["a", "b", "c"]
    assert joined.text == psycopg_text(joined.rows)
    # Rows without text (a value COPY text cannot carry) leave the whole join row by row.
    assert CopyRows.join([first, CopyRows(second.rows)]).text is None
