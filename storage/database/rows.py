"""Reports and rejected messages as table rows.

The typed columns are copies of payload fields (`storage.reports.typed_values`), taken
tolerantly: a value that passed validation but does not parse, has the wrong type or is longer
than its column's bound is stored as NULL; the payload keeps it as sent.
"""

import hashlib
from typing import Any

from storage.reports import (
    MAX_TEXT_CHARS,
    TYPED_COLUMNS,
    Rejected,
    Report,
    payload_text,
    to_record,
    typed_values,
    utc,
)

# The id of a rejected row is cut to this (the raw record keeps it whole), so that the row
# fits its index whatever it came from.
_REJECTED_ID_CHARS = MAX_TEXT_CHARS

REPORT_COLUMNS = ("report_id", "kind", "queue", "payload", "received_at", *TYPED_COLUMNS)
REJECTED_COLUMNS = ("report_id", "queue", "reason", "raw", "received_at", "digest")


def report_row(report: Report) -> dict[str, Any]:
    values = (report.report_id, report.kind, report.queue, report.payload, utc(report.received_at))
    return dict(
        zip(REPORT_COLUMNS, (*values, *typed_values(report.kind, report.payload)), strict=True)
    )


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
    # Keyed by what the report is, without the database's wording (which another statement
    # path, server version or lc_messages may change) and without the time it was received
    # (which the record holds): the same report refused again, a replayed record or the message
    # received again (resent, redelivered), is the same row.
    content = payload_text(report).encode("utf-8", "surrogatepass")
    row["digest"] = digest(report.report_id, report.queue, "database refused", content)
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
