"""What the storage layer keeps: a valid report or a rejected message, and its journal record.

A journal record is the JSON encoding of one of these, tagged by `t` ("r" report, "x" rejected).
The raw bytes of a rejected message are kept as base64 so that any byte sequence survives.

A report that carries the producer's JSON text (`body`) is written as `t` "R" with that text as
the last member `p`, unchanged: it is neither encoded again when journalled nor when copied into
the database, and `from_record` gives it back as `body` beside the parsed payload. Its head also
carries the report's typed columns (`c`, TYPED_COLUMNS, times as ISO 8601 text), so that a drain
into COPY takes the head and the text and never parses the payload.

It also holds the contract on kinds of report, which the wire's validation and the database's
rows both read: the kinds, a queue's kind, the default queues, and each kind's required fields
with their types, bounds and typed `reports` columns.
"""

import base64
import functools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

# -- the kinds of report -------------------------------------------------------------------------

# A text field copied into a typed, indexed column is at most this long. At up to 4 bytes a
# character in UTF-8 it fits a PostgreSQL btree index row (2704 bytes at most) with the time of
# the two-column indexes beside it; a longer one would be refused by the database, not the wire.
MAX_TEXT_CHARS = 512
# A count must fit a 64-bit signed column.
MAX_COUNT = (1 << 63) - 1

FieldType = Literal["text", "time", "count", "number"]


@dataclass(frozen=True, slots=True)
class Field:
    """A required payload field: its type, its bound, and the `reports` column copying it."""

    name: str
    type: FieldType
    column: str | None = None  # None: kept in the payload only
    max_chars: int | None = None  # text only


_CALL_ID = Field("call_id", "text", "call_id", MAX_TEXT_CHARS)
_COMPONENT = Field("component", "text", "component", MAX_TEXT_CHARS)

# The contract's required fields per kind; more fields are allowed and kept in the payload.
FIELDS: dict[str, tuple[Field, ...]] = {
    "cdr": (
        _CALL_ID,
        _COMPONENT,
        Field("tenant", "text", "tenant", MAX_TEXT_CHARS),
        Field("ivr_profile", "text"),
        Field("start", "time", "started_at"),
        Field("end", "time", "ended_at"),
    ),
    "or": (
        _COMPONENT,
        Field("interval_start", "time", "interval_start"),
        Field("arrivals", "count", "arrivals"),
        Field("peak", "count", "peak"),
    ),
    "sq": (
        _CALL_ID,
        _COMPONENT,
        Field("metric", "text", "metric", MAX_TEXT_CHARS),
        Field("value", "number", "value"),
    ),
    "events": (
        _CALL_ID,
        _COMPONENT,
        Field("event", "text"),
        Field("at", "time", "started_at"),
    ),
}
KINDS = tuple(FIELDS)
QUEUE_PREFIX = "gvp.reporting."
# The typed columns of `reports` that copy payload fields, in the table's order.
TYPED_COLUMNS = (
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
DEFAULT_QUEUES = tuple(f"{QUEUE_PREFIX}{kind}" for kind in KINDS)


def kind_of(queue: str) -> str:
    """A queue's kind: the last dot-part of its name, as in gvp.reporting.cdr or, where one
    broker serves several pairs, site1.gvp.reporting.cdr. Not checked against KINDS."""
    return queue.rpartition(".")[2]


# -- the typed columns ----------------------------------------------------------------------------

# Text, count and number fields are copied from the payload of any kind that has them (an event
# may carry a tenant); a time only for the kinds that name it, since started_at is a cdr's
# `start` but an event's `at`. Copied tolerantly: a value that does not parse, has the wrong type
# or is longer than its column's bound is NULL; the payload keeps it as sent.
_COPIED = {f.name: f for fields in FIELDS.values() for f in fields if f.column and f.type != "time"}
_COLUMN_INDEX = {column: index for index, column in enumerate(TYPED_COLUMNS)}
_TEXT_FIELDS = tuple(
    (_COLUMN_INDEX[f.column], f.name, f.max_chars or MAX_TEXT_CHARS)
    for f in _COPIED.values()
    if f.type == "text" and f.column
)
_INT_FIELDS = tuple(
    (_COLUMN_INDEX[f.column], f.name) for f in _COPIED.values() if f.type == "count" and f.column
)
_NUMBER_FIELDS = tuple(
    (_COLUMN_INDEX[f.column], f.name) for f in _COPIED.values() if f.type == "number" and f.column
)
_TIME_FIELDS = {
    kind: tuple((_COLUMN_INDEX[f.column], f.name) for f in fields if f.type == "time" and f.column)
    for kind, fields in FIELDS.items()
}


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


def number(value: Any) -> float | None:
    """A `number` field's typed column: the value as a float; None if it is not a number or is
    an integer beyond a float's range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def typed_values(kind: str, payload: dict[str, Any]) -> list[Any]:
    """The values of TYPED_COLUMNS for a report: copies of its payload's fields (times in UTC)."""
    values: list[Any] = [None] * len(TYPED_COLUMNS)
    _copy(payload, values, _TEXT_FIELDS, _INT_FIELDS, _NUMBER_FIELDS)
    get = payload.get
    for index, name in _TIME_FIELDS.get(kind, ()):
        values[index] = parse_time(get(name))
    return values


# Per kind, the copied fields that are not among its required ones (an event's tenant), with
# their names, which a payload seldom holds.
_OTHERS = {
    kind: tuple(
        tuple(f for f in group if f[1] not in {r.name for r in fields})
        for group in (_TEXT_FIELDS, _INT_FIELDS, _NUMBER_FIELDS)
    )
    for kind, fields in FIELDS.items()
}
_OTHER_NAMES = {
    kind: frozenset(f[1] for group in others for f in group) for kind, others in _OTHERS.items()
}


def copy_others(kind: str, payload: dict[str, Any], values: list[Any]) -> list[Any]:
    """`values` (TYPED_COLUMNS, holding the copies of the kind's required fields, as the wire's
    validation makes them once it has checked each) with the other copied fields filled in as
    `typed_values` fills them: then the two lists are equal."""
    if not _OTHER_NAMES[kind].isdisjoint(payload):
        _copy(payload, values, *_OTHERS[kind])
    return values


def _copy(
    payload: dict[str, Any],
    values: list[Any],
    texts: tuple[tuple[int, str, int], ...],
    ints: tuple[tuple[int, str], ...],
    numbers: tuple[tuple[int, str], ...],
) -> None:
    get = payload.get
    for index, name, max_chars in texts:
        value = get(name)
        if isinstance(value, str) and len(value) <= max_chars:
            values[index] = value
    for index, name in ints:
        # Passed through unbounded: a value beyond bigint is a row the database refuses, and so
        # lands in rejected_reports rather than being silently cut.
        value = get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            values[index] = value
    for index, name in numbers:
        values[index] = number(get(name))


# -- what is stored and journalled ---------------------------------------------------------------


# Reports and rejected messages are made for every message, twice (at intake and again when
# drained): plain slotted classes, whose constructors cost half a frozen one's. Nothing changes
# one once made.
@dataclass(slots=True)
class Report:
    """A report that passed validation; `payload` is the producer's JSON object, unchanged."""

    report_id: str
    kind: str
    queue: str
    # None only as `from_record(payload=False)` gives it, beside the text and columns.
    payload: dict[str, Any] | None
    received_at: datetime
    # The payload's JSON text as the producer sent it (validated), when there is one.
    body: str | None = None
    # TYPED_COLUMNS as a journal record carries them (times as ISO 8601 text), when it does.
    columns: list[Any] | None = field(default=None, compare=False)
    # TYPED_COLUMNS as `typed_values` gives them, made by the wire's validation with its checks.
    typed: list[Any] | None = field(default=None, compare=False)


@dataclass(slots=True)
class Rejected:
    """A message that could not be taken as a report, with the reason and its raw body."""

    report_id: str
    queue: str
    reason: str
    raw: bytes
    received_at: datetime


_BODY_KEY = b',"p":'
# How every "R" record begins: to_record writes `t` first.
_REPORT_HEAD = b'{"t":"R"'


# orjson reads an integer beyond 64 bits as a float, `json.loads` as an int: a float this large
# may have been one.
_LARGE = float(1 << 63)


def json_members(value: Any) -> int:
    """Members of every object in a value parsed by orjson; -1 if a float in it may have been
    an integer too large for orjson, which `json.loads` must then read."""
    count = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            count += len(item)
            item = item.values()
        elif type(item) is not list:
            continue  # a scalar at the top
        for inner in item:
            kind = type(inner)
            if kind is dict or kind is list:
                stack.append(inner)
            elif kind is float and not -_LARGE < inner < _LARGE:
                return -1
    return count


def _loads(data: bytes) -> Any:
    """JSON parsed in C, unless it may hold an integer beyond 64 bits or orjson refuses it (NaN,
    which a record written before validation refused it may hold): then `json.loads`."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
    return value if json_members(value) >= 0 else json.loads(data)


def payload_text(report: Report) -> str:
    """The report's payload as JSON text: the producer's, where the report has it (a record
    written before records carried it has the parsed payload alone)."""
    if report.body is not None:
        return report.body
    return json.dumps(report.payload, separators=(",", ":"))


def to_record(item: Report | Rejected) -> bytes:
    if isinstance(item, Report) and item.body is not None:
        head: dict[str, Any] = {"t": "R", "id": item.report_id, "k": item.kind, "q": item.queue}
        head["at"] = _isoformat(item.received_at)
        try:
            # The typed columns too, so that the drain copies them without reading the payload.
            columns = item.columns
            if columns is None:
                columns = item.typed
                if columns is None:
                    columns = typed_values(item.kind, item.payload)
            head["c"] = columns
            text = orjson.dumps(head)
        except TypeError:  # an integer beyond 64 bits: the drain reads the payload for them
            del head["c"]
            text = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return text[:-1] + _BODY_KEY + item.body.encode("utf-8") + b"}"
    if isinstance(item, Report):
        doc = {
            "t": "r",
            "id": item.report_id,
            "k": item.kind,
            "q": item.queue,
            "p": item.payload,
            "at": item.received_at.isoformat(),
        }
    else:
        doc = {
            "t": "x",
            "id": item.report_id,
            "q": item.queue,
            "why": item.reason,
            "raw": base64.b64encode(item.raw).decode("ascii"),
            "at": item.received_at.isoformat(),
        }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def from_record(data: bytes, *, payload: bool = True) -> Report | Rejected:
    """The report or rejected message a journal record holds. With `payload` False, a report
    whose record carries its typed columns comes without its parsed payload (None): its text and
    columns are all COPY needs."""
    if data.startswith(_REPORT_HEAD):
        return _report(data, payload)
    doc = _loads(data)
    at = _received_at(doc["at"])
    if doc["t"] == "r":
        return Report(doc["id"], doc["k"], doc["q"], doc["p"], at)
    return Rejected(doc["id"], doc["q"], doc["why"], base64.b64decode(doc["raw"]), at)


def _report(data: bytes, payload: bool) -> Report:
    """An "R" record: its head parsed on its own, its body sliced out as text."""
    # The head's strings are JSON-escaped, so the first `,"p":` is the body's key.
    start = data.index(_BODY_KEY)
    head = orjson.loads(data[:start] + b"}")
    body = data[start + len(_BODY_KEY) : -1]
    columns = head.get("c")
    if columns is not None and len(columns) != len(TYPED_COLUMNS):
        raise ValueError(f"a record with {len(columns)} typed columns")
    parsed = _loads(body) if payload or columns is None else None
    at = _received_at(head["at"])
    return Report(head["id"], head["k"], head["q"], parsed, at, body.decode("utf-8"), columns)


# The records of one intake batch share their `at`, so a few parsed ones are kept.
_received_at = functools.lru_cache(maxsize=4)(datetime.fromisoformat)
# And the last one written (by identity: equal times may differ in their offset, and so text).
_last_at: tuple[datetime | None, str] = (None, "")


def _isoformat(at: datetime) -> str:
    global _last_at
    last = _last_at
    if last[0] is at:
        return last[1]
    text = at.isoformat()
    _last_at = (at, text)  # one assignment: another thread sees the old pair or this one
    return text
