"""One STOMP message in, a Report or a Rejected out: the validation of reports on the wire.

`decode` is pure and never raises: whatever a producer sends becomes either a Report or a
Rejected with a reason naming the problem, so that bad input can neither block nor kill the
consumer. It is on the hot path: a body is parsed by orjson (in C) when the result is sure to be
what the standard library's parser gives (see `_quick_parse`), otherwise by `json.loads` with
the hooks that name the problem; the field checks are hand-written.

Beyond the contract's field rules, a report is also rejected when its meaning is ambiguous (a key
given twice in one object: parsers differ in which value they keep) or when its payload could not
be stored as it is: NaN/Infinity (not JSON, and PostgreSQL refuses them), NUL characters
(PostgreSQL text and jsonb refuse them), lone surrogates (not encodable as UTF-8), and a required
text field longer than its typed column can index (`storage.reports.FIELDS` has the bounds).
Letting those through would only make the database refuse the row later.
"""

import functools
import hashlib
import inspect
import json
import math
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

import orjson

from storage.reports import (
    FIELDS,
    MAX_COUNT,
    TYPED_COLUMNS,
    FieldType,
    Rejected,
    Report,
    copy_others,
    json_members,
    kind_of,
    number,
    utc,
)

DESTINATION_PREFIX = "/queue/"
MAX_REPORT_ID_CHARS = 200
# Rejected ids and queue names built from producer input are cut to this, to stay printable.
_SHOWN_CHARS = 200
# Deeper payloads are refused: the journal encoder and the database have nesting limits too.
MAX_DEPTH = 32


# A required field's check: what is wrong with the value (None if nothing), and the value's copy
# in its typed column as `storage.reports.typed_values` makes it. One step for both, so that a
# time is parsed once.
_Checked = tuple[str | None, Any]


def _text(value: Any, limit: int | None) -> _Checked:
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty string", None
    if limit is not None and len(value) > limit:
        # Past the bound the database could not index it: refused here, with a reason.
        return f"is longer than {limit} characters ({len(value)})", None
    return None, value


def _time(value: Any, _limit: int | None) -> _Checked:
    if not isinstance(value, str):
        return "must be an ISO 8601 time string", None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return "is not an ISO 8601 time", None
    try:
        return None, utc(at)
    except OverflowError:  # a time UTC cannot hold: NULL, as typed_values has it
        return None, None


def _count(value: Any, _limit: int | None) -> _Checked:
    # bool is a subclass of int; true/false are not counts.
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        return "must be an integer >= 0", None
    return None, value


def _number(value: Any, _limit: int | None) -> _Checked:
    if type(value) not in (int, float):
        return "must be a number", None
    return None, number(value)


_Check = Callable[[Any, int | None], _Checked]
_TYPE_CHECKS: dict[FieldType, _Check] = {
    "text": _text,
    "time": _time,
    "count": _count,
    "number": _number,
}

# Each kind's required fields, from the contract's table: the name, its check, the bound on its
# length, and the index of its typed column in TYPED_COLUMNS (None: the payload only).
_CHECKS: dict[str, tuple[tuple[str, _Check, int | None, int | None], ...]] = {
    kind: tuple(
        (
            field.name,
            _TYPE_CHECKS[field.type],
            field.max_chars,
            None if field.column is None else TYPED_COLUMNS.index(field.column),
        )
        for field in fields
    )
    for kind, fields in FIELDS.items()
}


class _BadPayload(ValueError):
    """Raised inside JSON parsing for a value that cannot be stored."""


def _reject_constant(name: str) -> Any:
    raise _BadPayload(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    # Which of two values a parser keeps differs between parsers: an ambiguous report is refused.
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _BadPayload(f"duplicate key {_printable(key)!r}")
            seen.add(key)
    return obj


def _finite_float(text: str) -> float:
    value = float(text)
    # json.loads turns 1e400 into inf, which no JSON encoder or database takes back.
    if not math.isfinite(value):
        raise _BadPayload(f"number {text[:40]} is out of range")
    return value


def _storable_text(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800-style escape
        return False
    return True


def _check_strings(value: Any) -> str | None:
    """The first unstorable string in a parsed JSON value, described; None if all are fine."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not _storable_text(item):
                return "contains a NUL character or a lone surrogate"
        elif isinstance(item, dict):
            for key, inner in item.items():
                if not _storable_text(key):
                    return "contains a NUL character or a lone surrogate in a key"
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _quick_parse(body: bytes, text: str) -> dict[str, Any] | None:
    """The JSON object `body` holds, parsed in C, when it is exactly what `json.loads` with the
    hooks gives; None when that parser must decide (errors, names given twice, large numbers,
    anything but an object)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        # Including NaN/Infinity, numbers out of range, lone surrogates and deep nesting: the
        # standard parser says which.
        return None
    if type(payload) is not dict:
        return None
    # Every member name ends `":` here, and strings only add to the count: a count equal to
    # the members parsed proves that no object named a member twice (orjson keeps the last).
    names = json_members(payload)
    if names < 0 or text.count('":') != names:
        return None
    # Blanks before a colon could hide a name from that count.
    if " :" in text or "\n:" in text or "\t:" in text or "\r:" in text:
        return None
    return payload


def _printable(text: str) -> str:
    """Producer text made safe to store and log: ASCII escapes, bounded length."""
    shown = text if text.isascii() and text.isprintable() else ascii(text)[1:-1]
    return shown[:_SHOWN_CHARS]


def body_id(body: bytes) -> str:
    """The id of a message that carries none: a hash of its body, stable across redeliveries."""
    return "body-sha256:" + hashlib.sha256(body).hexdigest()[:32]


def _valid_id(value: str) -> bool:
    # U+FFFD stands where the broker found bytes that were not UTF-8: ids that differed in those
    # bytes would collapse into one, and all but the first be taken for redeliveries.
    return (
        0 < len(value) <= MAX_REPORT_ID_CHARS
        and value.isprintable()
        and value.strip() != ""
        and "\ufffd" not in value
    )


# What the rejected-reports metric is labelled by: a fixed set, each the beginning of the reasons
# it stands for, never the text after it (a size, an offset, a destination a producer chose).
# The first that a reason begins with is its label; a reason that begins with none is "other".
REASON_LABELS = (
    ("unknown destination", "unknown destination"),
    ("no report-id", "no report id"),
    ("report-id is not", "bad report id"),
    ("body of ", "body over max_body_bytes"),
    ("body is not UTF-8", "body not UTF-8"),
    ("body is not storable JSON", "body not storable JSON"),
    ("body is not JSON", "body not JSON"),
    ("body is JSON ", "body not a JSON object"),
    ("body is nested deeper", "body nested too deeply"),
    ("body contains", "body holds a NUL or lone surrogate"),
    ("field ", "field missing or invalid"),
    ("undecodable", "undecodable"),
)


def reason_label(reason: str) -> str:
    for beginning, label in REASON_LABELS:
        if reason.startswith(beginning):
            return label
    return "other"


def _never_raising(
    decode: Callable[..., Report | Rejected],
) -> Callable[..., Report | Rejected]:
    """`decode`, with any exception it raises turned into a Rejected of the message. Its
    arguments pass through as given: the intake passes them by position, which costs less."""
    signature = inspect.signature(decode)

    @functools.wraps(decode)
    def never_raising(*args: Any, **kwargs: Any) -> Report | Rejected:
        try:
            return decode(*args, **kwargs)
        except Exception as exc:  # a bug here must not stop the stream: keep it as rejected
            given = signature.bind(*args, **kwargs).arguments
            body, destination = given["body"], given["destination"]
            raw = bytes(body) if isinstance(body, (bytes, bytearray, memoryview)) else b""
            reason = f"undecodable: {type(exc).__name__}"
            return Rejected(body_id(raw), _printable(str(destination)), reason, raw, given["now"])

    return never_raising


@_never_raising
def decode(
    destination: str,
    headers: Mapping[str, str],
    body: bytes,
    queues: Collection[str],
    max_body_bytes: int,
    now: datetime,
) -> Report | Rejected:
    """The report carried by one message, or why it is rejected. Never raises."""
    body = bytes(body)
    queue = destination.removeprefix(DESTINATION_PREFIX)

    # The id comes first, so that even a rejected message is keyed stably across redeliveries.
    report_id = headers.get("report-id") or headers.get("message-id") or ""
    id_problem = None
    if not report_id:
        id_problem = "no report-id or message-id header"
    elif not _valid_id(report_id):
        id_problem = f"report-id is not a printable string of 1..{MAX_REPORT_ID_CHARS} characters"
    if id_problem is not None:
        report_id = body_id(body)

    def rejected(reason: str, shown_queue: str = queue) -> Rejected:
        # A rejected message never carries more than the limit: resources stay bounded.
        raw = body
        if len(body) > max_body_bytes:
            raw = body[:max_body_bytes]
            reason += f"; raw body kept truncated to {max_body_bytes} bytes"
        return Rejected(report_id, _printable(shown_queue), reason, raw, now)

    # The config lists the queues this pair consumes; the kind is the name's last part.
    kind = kind_of(queue)
    if not destination.startswith(DESTINATION_PREFIX) or kind not in _CHECKS or queue not in queues:
        return rejected(f"unknown destination {_printable(destination)}", shown_queue=destination)
    if id_problem is not None:
        return rejected(id_problem)
    if len(body) > max_body_bytes:
        return rejected(f"body of {len(body)} bytes is over max_body_bytes {max_body_bytes}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return rejected(f"body is not UTF-8 (byte {exc.start})")
    payload = _quick_parse(body, text)
    if payload is None:
        try:
            payload = json.loads(
                text,
                parse_constant=_reject_constant,
                parse_float=_finite_float,
                object_pairs_hook=_unique_keys,
            )
        except _BadPayload as exc:
            return rejected(f"body is not storable JSON: {exc}")
        except RecursionError:
            return rejected("body is not JSON: nested too deeply")
        except ValueError as exc:  # JSONDecodeError, and int strings over the digit limit
            return rejected(f"body is not JSON: {_printable(str(exc))}")
    if not isinstance(payload, dict):
        return rejected(f"body is JSON {type(payload).__name__}, not an object")
    # The bracket count bounds the depth, so the walk runs only for unusual bodies.
    if text.count("{") + text.count("[") > MAX_DEPTH and _too_deep(payload):
        return rejected(f"body is nested deeper than {MAX_DEPTH} levels")
    # Only escapes can produce NULs or surrogates: raw ones fail UTF-8 or JSON parsing above.
    if "\\u" in text:
        problem = _check_strings(payload)
        if problem is not None:
            return rejected(f"body {problem}")
    # The typed columns are copied as each field is checked: the intake's record carries them.
    typed: list[Any] = [None] * len(TYPED_COLUMNS)
    for name, check, limit, index in _CHECKS[kind]:
        if name not in payload:
            return rejected(f"field {name} is missing ({kind} report)")
        problem, copied = check(payload[name], limit)
        if problem is not None:
            return rejected(f"field {name} {problem}")
        if index is not None:
            typed[index] = copied
    typed = copy_others(kind, payload, typed)
    return Report(report_id, kind, queue, payload, now, text, None, typed)
