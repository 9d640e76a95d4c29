"""Sample reports: plausible, valid reports of each kind, drawn from a seeded random source.

What `produce`, the demo, the benchmarks and the tests send; the producer itself sends any body.
"""

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from storage.reports import KINDS

_COMPONENTS = ("mcp-01", "mcp-02", "rm-01", "cm-01")
_TENANTS = ("acme", "globex", "initech")
_PROFILES = ("main-menu", "billing", "support")
_METRICS = ("mos", "jitter_ms", "packet_loss")
_EVENTS = ("answer", "transfer", "dtmf", "hangup")
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def sample_report(kind: str, rng: random.Random) -> dict[str, Any]:
    """A plausible report of one kind, valid per the contract, drawn from `rng`."""
    at = _EPOCH + timedelta(seconds=rng.randrange(365 * 86400))
    call_id = f"call-{rng.getrandbits(48):012x}"
    component = rng.choice(_COMPONENTS)
    if kind == "cdr":
        return {
            "call_id": call_id,
            "component": component,
            "tenant": rng.choice(_TENANTS),
            "ivr_profile": rng.choice(_PROFILES),
            "start": at.isoformat(),
            "end": (at + timedelta(seconds=rng.randrange(1, 900))).isoformat(),
            "ani": f"+1555{rng.randrange(10**7):07d}",
        }
    if kind == "or":
        peak = rng.randrange(200)
        return {
            "component": component,
            "interval_start": at.replace(second=0).isoformat(),
            "arrivals": rng.randrange(peak * 10 + 1),
            "peak": peak,
        }
    if kind == "sq":
        return {
            "call_id": call_id,
            "component": component,
            "metric": rng.choice(_METRICS),
            "value": round(rng.uniform(0, 5), 3),
        }
    if kind == "events":
        return {
            "call_id": call_id,
            "component": component,
            "event": rng.choice(_EVENTS),
            "at": at.isoformat(),
        }
    raise ValueError(f"unknown report kind {kind!r}; expected one of {', '.join(KINDS)}")


def database_poison(db_url: str, rng: random.Random) -> tuple[bytes, str]:
    """The body of an sq report that passes decode but the database of `db_url` refuses, and how
    its rejection reason starts: on PostgreSQL a number jsonb cannot hold (1e-20000, which
    Python reads as 0.0), on MariaDB a payload 32 levels deep, which decode takes (MAX_DEPTH)
    but MariaDB's JSON does not (31 at most)."""
    body = json.dumps(sample_report("sq", rng)).encode()[:-1]
    if db_url.startswith("mysql"):
        return (
            body + b', "deep": ' + b"[" * 31 + b"]" * 31 + b"}",
            "database refused: OperationalError: (4025",
        )
    return body + b', "tiny": 1e-20000}', "database refused: NumericValueOutOfRange"
