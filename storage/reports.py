"""What the storage layer keeps: a valid report or a rejected message, and its journal record.

A journal record is the JSON encoding of one of these, tagged by `t` ("r" report, "x" rejected).
The raw bytes of a rejected message are kept as base64 so that any byte sequence survives.
"""

import base64
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


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that could not be taken as a report, with the reason and its raw body."""

    report_id: str
    queue: str
    reason: str
    raw: bytes
    received_at: datetime


def to_record(item: Report | Rejected) -> bytes:
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
    doc = json.loads(data)
    at = datetime.fromisoformat(doc["at"])
    if doc["t"] == "r":
        return Report(doc["id"], doc["k"], doc["q"], doc["p"], at)
    return Rejected(doc["id"], doc["q"], doc["why"], base64.b64decode(doc["raw"]), at)
