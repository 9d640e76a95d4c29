"""Reports as rows: typed columns taken tolerantly, rejected rows keyed by a stable digest."""

from datetime import UTC, datetime, timedelta, timezone

from storage.database.rows import refused_row, rejected_row, report_row
from storage.reports import MAX_TEXT_CHARS, Rejected, Report, from_record

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_cdr_times_are_stored_in_utc() -> None:
    payload = {"call_id": "c1", "start": "2024-05-01T14:00:00+02:00", "end": "2024-05-01T12:05Z"}
    row = report_row(Report("r", "cdr", "q", payload, AT))
    assert row["started_at"] == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert row["ended_at"] == datetime(2024, 5, 1, 12, 5, tzinfo=UTC)
    assert row["call_id"] == "c1"


def test_unparsable_or_mistyped_fields_become_null() -> None:
    payload = {"call_id": 7, "interval_start": "soon", "arrivals": True, "value": "high"}
    row = report_row(Report("r", "or", "q", payload, AT))
    assert row["call_id"] is None
    assert row["interval_start"] is None
    assert row["arrivals"] is None
    assert row["value"] is None


def test_numbers_by_kind() -> None:
    row = report_row(Report("r", "sq", "q", {"metric": "mos", "value": 4, "peak": 3}, AT))
    assert (row["metric"], row["value"], row["peak"]) == ("mos", 4.0, 3)
    assert report_row(Report("r", "sq", "q", {"value": 10**400}, AT))["value"] is None


def test_received_at_naive_is_taken_as_utc() -> None:
    naive = report_row(Report("r", "sq", "q", {}, datetime(2024, 1, 1)))
    shifted = report_row(
        Report("r", "sq", "q", {}, datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))))
    )
    assert naive["received_at"] == shifted["received_at"] == datetime(2024, 1, 1, tzinfo=UTC)


def test_rejected_digest_is_stable_and_distinguishes_fields() -> None:
    one = rejected_row(Rejected("id", "q", "why", b"raw", AT))
    assert one["digest"] == rejected_row(Rejected("id", "q", "why", b"raw", AT))["digest"]
    assert one["digest"] != rejected_row(Rejected("id", "q", "why", b"raw2", AT))["digest"]
    # Field boundaries count: ("ab", "c") is not ("a", "bc").
    assert (
        rejected_row(Rejected("ab", "c", "why", b"", AT))["digest"]
        != rejected_row(Rejected("a", "bc", "why", b"", AT))["digest"]
    )


def test_nul_in_rejected_text_is_scrubbed_but_digest_kept() -> None:
    row = rejected_row(Rejected("a\x00b", "q", "why", b"\x00", AT))
    assert row["report_id"] == "a\\x00b"
    assert row["raw"] == b"\x00"
    assert row["digest"] != rejected_row(Rejected("a\\x00b", "q", "why", b"\x00", AT))["digest"]


def test_refused_report_keeps_its_journal_record() -> None:
    report = Report("r1", "cdr", "q", {"arrivals": 2**70}, AT)
    row = refused_row(report, "database refused: out of range")
    assert from_record(row["raw"]) == report
    assert row["reason"] == "database refused: out of range"


def test_text_longer_than_its_column_bound_is_null_and_kept_in_the_payload() -> None:
    # An optional field of another kind is not bounded by decode; its typed copy must not make
    # the database refuse the report.
    long = "x" * (MAX_TEXT_CHARS + 1)
    payload = {"component": "rm-1", "call_id": long, "tenant": "t" * MAX_TEXT_CHARS}
    row = report_row(Report("r", "or", "q", payload, AT))
    assert row["call_id"] is None and row["payload"]["call_id"] == long
    assert row["tenant"] == "t" * MAX_TEXT_CHARS


def test_a_refused_report_is_keyed_without_the_database_wording() -> None:
    # The same record refused again, by another statement path or in another locale, is the
    # same rejected row.
    report = Report("r", "sq", "q", {"value": 1}, AT)
    first = refused_row(report, "database refused: NumericValueOutOfRange: value overflows")
    again = refused_row(report, "database refused: NumericValueOutOfRange: valeur hors limites")
    assert first["digest"] == again["digest"] and first["reason"] != again["reason"]
    assert refused_row(Report("r2", "sq", "q", {"value": 1}, AT), "x")["digest"] != first["digest"]
