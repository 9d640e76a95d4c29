"""What the storage layer keeps: a valid report or a rejected message, and its journal record.

A journal record is the JSON encoding of one of these, tagged by `t` ("r" report, "x" rejected).
The raw bytes of a rejected message are kept as base64 so that any byte sequence survives.

A report that carries the producer's JSON text (`body`) is written as `t` "R" with that text as
the last member `p`, unchanged: it is neither encoded again when journalled nor when copied into
the database, and `from_record` gives it back as `body` beside the parsed payload.
"""

import base64
import functools
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Report:
    """A report that passed validation; `payload` is the producer's JSON object, unchanged."""

    report_id: str
    kind: str
    queue: str
    payload: dict[str, Any]
    received_at: datetime
    # The payload's JSON text as the producer sent it (validated), when there is one.
    body: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that could not be taken as a report, with the reason and its raw body."""

    report_id: str
    queue: str
    reason: str
    raw: bytes
    received_at: datetime


_BODY_KEY = b',"p":'
_BODY_KEY_TEXT = _BODY_KEY.decode("ascii")


def to_record(item: Report | Rejected) -> bytes:
    if isinstance(item, Report) and item.body is not None:
        head = {"t": "R", "id": item.report_id, "k": item.kind, "q": item.queue}
        head["at"] = item.received_at.isoformat()
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


def from_record(data: bytes) -> Report | Rejected:
    # Decoded once, then parsed and sliced as text; records are UTF-8 (to_record writes them).
    text = data.decode("utf-8")
    doc = json.loads(text)
    at = _received_at(doc["at"])
    if doc["t"] == "R":
        # The head's strings are JSON-escaped, so the first `,"p":` is the body's key.
        body = text[text.index(_BODY_KEY_TEXT) + len(_BODY_KEY_TEXT) : -1]
        return Report(doc["id"], doc["k"], doc["q"], doc["p"], at, body)
    if doc["t"] == "r":
        return Report(doc["id"], doc["k"], doc["q"], doc["p"], at)
    return Rejected(doc["id"], doc["q"], doc["why"], base64.b64decode(doc["raw"]), at)


# The records of one intake batch share their `at`, so a few parsed ones are kept.
_received_at = functools.lru_cache(maxsize=4)(datetime.fromisoformat)
