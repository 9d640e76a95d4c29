"""End-to-end throughput: a backlog waiting in the broker, drained into PostgreSQL.

The server (standalone, then a shared pair) is started once the backlog is in; its rate is taken
from the first report it has stored to the last, by polling /status `stored` every 50 ms, so that
its start-up is not counted. Beside it, on backlogs of the same size in the same broker: the raw
drain (receive and ack only) and the naive consumer (a transaction and an ack per report).

CPU per report, the figure a busy machine disturbs least: the CPU time (user + system) the
server's processes used over the same span (both instances of a pair), divided by the reports
stored in it; for the raw drain, the CPU time of the process that drains.
"""

import dataclasses
import time
from pathlib import Path
from typing import Any

from bench.load import naive_drain, preload, raw_drain, raw_drain_per_queue
from bench.servers import Servers, best_of, role_of, say
from reporting.config import BrokerConfig
from reporting.harness.instance import Instance
from reporting.harness.processes import cpu_seconds
from reporting.harness.waiting import wait_until

POLL_S = 0.05


def _cpu(instances: list[Instance]) -> float:
    return sum(cpu_seconds(i.pid) for i in instances if i.pid is not None)


def _taken(status: dict[str, Any]) -> int:
    """Reports an instance has journalled or stored, as its /status says."""
    return status.get("stored", 0) + ((status.get("journal") or {}).get("pending") or 0)


def _drain_rate(instances: list[Instance], count: int, timeout_s: float) -> dict[str, float]:
    """Reports/s from the first poll that sees a report stored to the one that sees them all.

    CPU per report: the servers' CPU time from the first poll that every instance answers (its
    start-up done) to the end, over the reports taken in that span (those journalled before it
    are left out; their drain is counted, so the figure errs high, by little). Cores: that CPU
    time over the wall time of the same span, what of the machine the server took."""
    deadline = time.monotonic() + timeout_s
    first_at = first_stored = None
    cpu_from: tuple[float, int, float] | None = None
    last_said = time.monotonic()
    while time.monotonic() < deadline:
        statuses = [i.try_status() for i in instances]
        stored = sum((st or {}).get("stored", 0) for st in statuses)
        if cpu_from is None and all(statuses):
            taken = sum(_taken(st) for st in statuses if st)
            cpu_from = (_cpu(instances), taken, time.monotonic())
        now = time.monotonic()
        if stored and first_at is None:
            first_at, first_stored = now, stored
        if stored >= count and cpu_from is not None and first_at is not None:
            seconds = now - first_at
            done = count - first_stored
            cpu_s, taken_before, cpu_at = cpu_from
            cpu_used = _cpu(instances) - cpu_s
            return {
                "reports": count,
                "seconds": seconds,
                "reports_per_s": done / seconds,
                "cpu_us_per_report": cpu_used / (count - taken_before) * 1e6,
                "cpu_reports": count - taken_before,
                "cores": cpu_used / (time.monotonic() - cpu_at),
            }
        if now - last_said >= 5:
            last_said = now
            say(f"  stored {stored:,}/{count:,}")
        time.sleep(POLL_S)
    raise TimeoutError(f"the server did not store {count} reports in {timeout_s:.0f} s")


def server(servers: Servers, mode: str, count: int, code: Path | None = None) -> dict[str, Any]:
    """The server of this checkout, or of the checkout at `code`, draining a backlog."""
    prefix = servers.prefix()
    say(f"{mode}: preloading {count:,} reports")
    sent = preload(servers.activemq.host, prefix, count, id_prefix=f"{mode}-{prefix}")
    say(f"  preloaded at {sent['reports_per_s']:,.0f} reports/s")
    db_url = servers.database(mode)
    if mode == "standalone":
        workdir = servers.workdir("standalone")
        config = servers.config(
            "rs-solo", mode=mode, prefix=prefix, db_url=db_url, journal_dir=workdir / "journal"
        )
        instances = [Instance(workdir / "rs-solo", config)]
    else:
        instances = list(servers.pair(mode=mode, prefix=prefix, db_url=db_url))
    try:
        for instance in instances:
            instance.code = code
            instance.start()
        if mode != "standalone":
            wait_until(
                lambda: any(role_of(i) == "active" for i in instances), 30, "an active instance"
            )
        result = _drain_rate(instances, count, timeout_s=max(300, count / 50))
    finally:
        for instance in instances:
            instance.stop(timeout_s=15)
    say(f"  {mode}: {result['reports_per_s']:,.0f} reports/s")
    return result | {"preload_reports_per_s": sent["reports_per_s"]}


def raw(servers: Servers, count: int, broker: BrokerConfig) -> dict[str, float]:
    """The broker's limit: one stomp.py consumer that acks and stores nothing."""
    return _raw_drain(servers, count, broker, "raw drain", raw_drain)


def limit(servers: Servers, count: int, broker: BrokerConfig) -> dict[str, float]:
    """The machine's limit: the raw drain with a consumer per queue, each in its own process.

    Each acks every tenth of its prefetch: a consumer with one subscription that acks only every
    half of its prefetch was measured here to get about 230 reports/s from ActiveMQ (the broker
    waits before it sends more), twenty times fewer than one acking more often."""
    acking = dataclasses.replace(broker, batch_records=max(1, broker.prefetch // 10))
    return _raw_drain(servers, count, acking, "raw drain per queue", raw_drain_per_queue)


def _raw_drain(
    servers: Servers, count: int, broker: BrokerConfig, what: str, drain: Any
) -> dict[str, float]:
    prefix = servers.prefix()
    say(f"{what}: preloading {count:,} reports")
    preload(servers.activemq.host, prefix, count, id_prefix=f"raw-{prefix}")
    started_cpu = time.process_time()
    result = drain(
        servers.activemq.host,
        prefix,
        count,
        prefetch=broker.prefetch,
        ack_every=broker.batch_records,
    )
    # In this process for one consumer; the consumers' own processes say theirs.
    result.setdefault("cpu_us_per_report", (time.process_time() - started_cpu) / count * 1e6)
    say(f"  {what}: {result['reports_per_s']:,.0f} reports/s")
    return result


def run(
    servers: Servers,
    *,
    count: int,
    naive_count: int,
    naive_s: float,
    rounds: int = 1,
    baseline_code: Path | None = None,
) -> dict[str, Any]:
    broker = BrokerConfig()
    results: dict[str, Any] = {"reports": count, "rounds": rounds}

    # The broker runs much slower on its first messages (its JIT, its store): a raw drain of a
    # warm-up backlog first, not counted. Then `rounds` rounds of the raw drain, the server in
    # each mode (and the earlier code's), one after the other, so that a machine whose speed
    # drifts (a virtual one, shared) slows each of them alike; and the raw drain once more.
    # Each figure is the best of its runs.
    say("warming the broker up")
    results["warm_up"] = raw(servers, min(count, 10_000), broker)
    modes = ["standalone", "shared"]
    if baseline_code is not None:
        # The same, run from an earlier checkout: the figures to compare CPU per report with.
        results["baseline_code"] = str(baseline_code)
        modes += ["standalone_baseline", "shared_baseline"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ["raw", *modes]}
    for round_ in range(1, rounds + 1):
        say(f"round {round_} of {rounds}")
        runs["raw"].append(raw(servers, count, broker))
        for name in modes:
            mode, _, baseline = name.partition("_")
            if baseline:
                say(f"{mode} from {baseline_code}")
            runs[name].append(
                server(servers, mode, count, code=baseline_code if baseline else None)
            )
    runs["raw"].append(raw(servers, count, broker))
    for name, measured in runs.items():
        results[name] = best_of(measured)
    results["limit"] = limit(servers, count, broker)

    prefix = servers.prefix()
    say(f"naive: preloading {naive_count:,} reports")
    preload(servers.activemq.host, prefix, naive_count, id_prefix=f"naive-{prefix}")
    results["naive"] = naive_drain(
        servers.activemq.host,
        prefix,
        servers.database("naive"),
        count=naive_count,
        seconds=naive_s,
        prefetch=broker.prefetch,
    )
    say(f"  naive: {results['naive']['reports_per_s']:,.0f} reports/s")
    for mode in ("standalone", "shared"):
        rate = results[mode]["reports_per_s"]
        results[mode]["ratio_to_raw"] = rate / results["raw"]["reports_per_s"]
        results[mode]["ratio_to_limit"] = rate / results["limit"]["reports_per_s"]
        results[mode]["ratio_to_naive"] = rate / results["naive"]["reports_per_s"]
    return results
