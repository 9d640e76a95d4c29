"""Reports and rejected messages as table rows.

The typed columns are copies of payload fields (`storage.reports.FIELDS` names them), taken
tolerantly: a value that passed validation but does not parse, has the wrong type or is longer
than its column's bound is stored as NULL; the payload keeps it as sent.
"""

import hashlib
from datetime import UTC, datetime
from typing import Any

from storage.reports import FIELDS, MAX_TEXT_CHARS, Rejected, Report, to_record

# Text, count and number fields are copied from the payload of any kind that has them (an event
# may carry a tenant); a time only for the kinds that name it, since started_at is a cdr's
# `start` but an event's `at`.
_COPIED = {f.name: f for fields in FIELDS.values() for f in fields if f.column and f.type != "time"}
_TEXT_FIELDS = tuple(
    (f.column, f.name, f.max_chars or MAX_TEXT_CHARS) for f in _COPIED.values() if f.type == "text"
)
_INT_FIELDS = tuple((f.column, f.name) for f in _COPIED.values() if f.type == "count")
_NUMBER_FIELDS = tuple((f.column, f.name) for f in _COPIED.values() if f.type == "number")
_TIME_FIELDS = {
    kind: tuple((f.column, f.name) for f in fields if f.type == "time")
    for kind, fields in FIELDS.items()
}
# The id of a rejected row is cut to this (the raw record keeps it whole), so that the row
# fits its index whatever it came from.
_REJECTED_ID_CHARS = MAX_TEXT_CHARS

REPORT_COLUMNS = (
    "report_id",
    "kind",
    "queue",
    "payload",
    "received_at",
    "call_id",
    "component",
    "tenant",
    "started_at",
    "ended_at",
    "interval_start",
    "arrivals",
    "peak",
    "metric",
    "value",
)
REJECTED_COLUMNS = ("report_id", "queue", "reason", "raw", "received_at", "digest")


def utc(at: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    tz = at.tzinfo
    if tz is UTC:  # what fromisoformat gives for "+00:00": nothing to convert
        return at
    return at.replace(tzinfo=UTC) if tz is None else at.astimezone(UTC)


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return utc(datetime.fromisoformat(value))
    except (ValueError, OverflowError):
        return None


def report_row(report: Report) -> dict[str, Any]:
    payload = report.payload
    row: dict[str, Any] = {
        "report_id": report.report_id,
        "kind": report.kind,
        "queue": report.queue,
        "payload": payload,
        "received_at": utc(report.received_at),
        "started_at": None,
        "ended_at": None,
        "interval_start": None,
    }
    for column, field, max_chars in _TEXT_FIELDS:
        value = payload.get(field)
        row[column] = value if isinstance(value, str) and len(value) <= max_chars else None
    for column, field in _INT_FIELDS:
        # Passed through unbounded: a value beyond bigint is a row the database refuses, and so
        # lands in rejected_reports rather than being silently cut.
        value = payload.get(field)
        row[column] = value if isinstance(value, int) and not isinstance(value, bool) else None
    for column, field in _NUMBER_FIELDS:
        row[column] = _number(payload.get(field))
    for column, field in _TIME_FIELDS.get(report.kind, ()):
        row[column] = parse_time(payload.get(field))
    return row


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def rejected_row(rejected: Rejected) -> dict[str, Any]:
    # Text scrubbed and the id cut so that any rejected message can be stored; the digest is of
    # the original, so a replay of the same record still matches.
    return {
        "report_id": scrub_text(rejected.report_id[:_REJECTED_ID_CHARS]),
        "queue": scrub_text(rejected.queue),
        "reason": scrub_text(rejected.reason),
        "raw": rejected.raw,
        "received_at": utc(rejected.received_at),
        "digest": digest(rejected.report_id, rejected.queue, rejected.reason, rejected.raw),
    }


def refused_row(report: Report, reason: str) -> dict[str, Any]:
    """A report the database refused, kept as a rejected row with its whole journal record."""
    try:
        raw = to_record(report)
    except ValueError:  # an integer too long to print, a lone surrogate: keep what prints
        raw = repr(report).encode("utf-8", "backslashreplace")
    row = rejected_row(Rejected(report.report_id, report.queue, reason, raw, report.received_at))
    # Keyed without the database's wording, which another statement path, server version or
    # lc_messages may change: the same record refused again is the same row.
    row["digest"] = digest(report.report_id, report.queue, "database refused", raw)
    return row


def digest(report_id: str, queue: str, reason: str, raw: bytes) -> str:
    h = hashlib.sha256()
    for part in (report_id, queue, reason):
        encoded = part.encode("utf-8", "surrogatepass")
        h.update(len(encoded).to_bytes(8, "big"))
        h.update(encoded)
    h.update(raw)
    return h.hexdigest()


def scrub_text(value: str) -> str:
    """Text the database can hold: NUL bytes (which PostgreSQL refuses) written as `\\x00`, lone
    surrogates (which UTF-8 cannot encode) as `\\udxxx`."""
    value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value
