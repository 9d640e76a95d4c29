"""Scaling out: end-to-end throughput of a group of 1, 2 and 3 instances, beside the raw drain.

For each size a backlog waits in the broker and the group's instances start side by side. The
first to join takes every queue, and queues move as the others join; the rate is therefore taken
from the moment every instance owns its share (each queue owned once, every instance owning at least
one where there are enough queues) to the last report stored, so that it is the group's steady
rate, not its start-up. The raw drain (receive and ack only, one consumer) runs in the same run.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.load import preload
from bench.servers import Servers, say, stored_by
from bench.throughput import POLL_S, raw
from reporting.config import BrokerConfig
from reporting.harness.instance import Instance
from reporting.harness.waiting import wait_until


def _spread(members: list[Instance], queues: int) -> tuple[int] | None:
    """(reports stored so far,) once every queue has one owner and each member its share."""
    statuses = [m.try_status() or {} for m in members]
    owned = [len(s.get("owned", [])) for s in statuses]
    if sum(owned) != queues or min(owned) < min(1, queues // len(members)):
        return None
    return (sum(s.get("stored", 0) for s in statuses),)


def group(servers: Servers, size: int, count: int) -> dict[str, Any]:
    prefix = servers.prefix()
    say(f"group of {size}: preloading {count:,} reports")
    preload(servers.activemq.host, prefix, count, id_prefix=f"group{size}-{prefix}")
    members = servers.group(size, prefix=prefix, db_url=servers.database(f"group{size}")).members
    queues = len(members[0].config["broker"]["queues"])
    try:
        started = time.monotonic()
        # Side by side, so that the shares are taken while most of the backlog still waits.
        with ThreadPoolExecutor(size) as pool:
            list(pool.map(lambda member: member.start(), members))
        (at_spread,) = wait_until(lambda: _spread(members, queues), 60, "every member's share")
        since = time.monotonic()
        say(f"  shares taken {since - started:.1f} s after start, {at_spread:,} stored")
        if at_spread > count // 2:
            raise RuntimeError("half the backlog was drained before the shares were taken")
        deadline = since + max(300, count / 50)
        while True:
            stored = stored_by(members)
            if stored >= count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the group stored {stored} of {count} reports")
            time.sleep(POLL_S)
        seconds = time.monotonic() - since
    finally:
        for member in members:
            member.stop(timeout_s=15)
    done = count - at_spread
    result = {
        "instances": size,
        "reports": done,
        "seconds": seconds,
        "reports_per_s": done / seconds,
    }
    say(f"  group of {size}: {result['reports_per_s']:,.0f} reports/s")
    return result


def run(servers: Servers, *, count: int, sizes: tuple[int, ...] = (1, 2, 3)) -> dict[str, Any]:
    broker = BrokerConfig()
    say("warming the broker up")
    raw(servers, min(count, 10_000), broker)
    raws = [raw(servers, count, broker)]
    groups = [group(servers, size, count) for size in sizes]
    raws.append(raw(servers, count, broker))
    best = max(raws, key=lambda run: run["reports_per_s"])
    for figure in groups:
        figure["ratio_to_raw"] = figure["reports_per_s"] / best["reports_per_s"]
    return {"reports": count, "raw": best, "raw_runs": raws, "groups": groups}
