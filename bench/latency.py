"""Latency from send to stored at half of the measured maximum end-to-end rate: the lower of the
standalone server's drain rate and the broker's rate for persistent sends with receipts (run.py).

Each report carries its send time (`sent_at`, Unix seconds, taken just before the SEND) in its
payload; stored time is the `reports.stored_at` column, which PostgreSQL fills with the start
time of the storing transaction (now()), so the figure leaves out the few milliseconds of the
commit itself. Client and database share one clock (one machine).
"""

import time
from typing import Any

import psycopg

from bench.failover import percentile
from bench.load import PacedSender
from bench.servers import Servers, say, stored_by
from reporting.harness.instance import Instance
from reporting.harness.waiting import wait_until


def run(servers: Servers, *, seconds: float, max_rate: float) -> dict[str, Any]:
    rate = max_rate / 2
    prefix = servers.prefix()
    db_url = servers.database("latency")
    workdir = servers.workdir("latency")
    config = servers.config(
        "rs-lat", mode="standalone", prefix=prefix, db_url=db_url, journal_dir=workdir / "journal"
    )
    instance = Instance(workdir / "rs-lat", config)
    count = int(rate * seconds)
    try:
        instance.start()
        say(f"  sending {count:,} reports at {rate:,.0f}/s (half of the {max_rate:,.0f}/s maximum)")
        sender = PacedSender([servers.activemq.host], prefix, rate=rate, id_prefix=prefix)
        sender.count = count
        started = time.monotonic()
        sender.start()
        sender.join(seconds * 3 + 60)
        achieved = len(sender.sent) / (time.monotonic() - started)
        sender.stop()
        wait_until(lambda: stored_by([instance]) >= count, 120, "every report stored", every_s=0.2)
    finally:
        instance.stop(timeout_s=15)
    with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM stored_at) - (payload->>'sent_at')::float8 FROM reports"
        ).fetchall()
    latencies = [float(r[0]) for r in rows]
    result = {
        "max_rate_reports_per_s": max_rate,
        "target_rate_reports_per_s": rate,
        "achieved_send_rate_reports_per_s": achieved,
        "reports": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
    }
    say(
        f"  latency at {achieved:,.0f}/s: p50 {result['p50_ms']:.0f} ms, "
        f"p99 {result['p99_ms']:.0f} ms"
    )
    return result
