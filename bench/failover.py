"""Failover under load: kill -9 of the active, R rounds per mode, p50/p99 of two times.

- active: from the kill until the other instance's /status says `active` (polled every 20 ms).
- first stored: from the kill until the first report whose send began after the kill is in the
  database (polled every 20 ms).

Shared mode: one broker, one journal directory; the killed instance is started again as the
standby before the next round, so every round kills the instance that is active then.
Segregated mode: each instance has its own broker and kill -9 of the active alone would leave
producers sending to a broker nobody consumes until the primary is back (by design), so each
round is the loss of the primary's host: its instance and its broker are killed together, the
producer fails over to the backup's broker, and the primary's host then comes back.
"""

import statistics
import time
from typing import Any

import psycopg

from bench.load import PacedSender
from bench.servers import SESSION_TIMEOUT_S, Servers, role_of, say, wait_until
from reporting.harness import ActiveMQ
from reporting.harness.instance import Instance

POLL_S = 0.02
RATE = 200  # reports/s of load during the rounds


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by linear interpolation (q in [0, 1])."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_s": round(percentile(values, 0.5), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "max_s": round(max(values), 3),
        "values_s": [round(v, 3) for v in values],
    }


def _stored(conn: psycopg.Connection, report_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM reports WHERE report_id = %s", (report_id,)).fetchone()
    conn.commit()
    return row is not None


def _round(
    pair: list[Instance],
    active: Instance,
    sender: PacedSender,
    conn: psycopg.Connection,
    *,
    host_broker: ActiveMQ | None = None,
) -> tuple[float, float]:
    other = pair[1] if active is pair[0] else pair[0]
    killed_wall = time.time()
    killed = time.monotonic()
    active.kill()
    if host_broker is not None:
        host_broker.kill()
    deadline = killed + 60
    took_active = None
    first = None
    took_stored = None
    while time.monotonic() < deadline and took_stored is None:
        now = time.monotonic()
        if took_active is None and role_of(other) == "active":
            took_active = now - killed
        if first is None:
            first = sender.first_sent_after(killed_wall)
        if first is not None and _stored(conn, first[0]):
            took_stored = time.monotonic() - killed
        time.sleep(POLL_S)
    while took_active is None and time.monotonic() < deadline:
        if role_of(other) == "active":
            took_active = time.monotonic() - killed
        time.sleep(POLL_S)
    if took_active is None or took_stored is None:
        raise TimeoutError(f"round: active after {took_active}, first stored after {took_stored}")
    return took_active, took_stored


def _shared(servers: Servers, rounds: int) -> dict[str, Any]:
    prefix = servers.prefix()
    db_url = servers.database("failover_shared")
    pair = servers.pair(mode="shared", prefix=prefix, db_url=db_url)
    sender = None
    to_active: list[float] = []
    to_stored: list[float] = []
    try:
        for instance in pair:
            instance.start()
        sender = PacedSender([servers.activemq.host], prefix, rate=RATE, id_prefix=prefix).start()
        with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
            for number in range(rounds):
                active = wait_until(
                    lambda: next((i for i in pair if role_of(i) == "active"), None),
                    60,
                    "an active instance",
                )
                standby = pair[1] if active is pair[0] else pair[0]
                wait_until(lambda s=standby: role_of(s) == "standby", 60, "a standby")
                # Under load: the active is storing what is being sent.
                before = active.status()["stored"]
                wait_until(
                    lambda a=active, b=before: a.status()["stored"] > b, 30, "reports stored"
                )
                took_active, took_stored = _round(pair, active, sender, conn)
                to_active.append(took_active)
                to_stored.append(took_stored)
                say(
                    f"  shared round {number + 1}/{rounds}: active after {took_active:.2f} s, "
                    f"first report stored after {took_stored:.2f} s"
                )
                active.start()
    finally:
        if sender is not None:
            sender.stop()
        for instance in pair:
            instance.stop(timeout_s=15)
    return {"to_active": summary(to_active), "to_first_stored": summary(to_stored)}


def _segregated(servers: Servers, rounds: int) -> dict[str, Any]:
    prefix = servers.prefix()
    db_url = servers.database("failover_segregated")
    brokers = [ActiveMQ(servers.workdir(f"activemq-{side}")) for side in ("primary", "backup")]
    hosts = [b.host for b in brokers]
    pair = servers.pair(
        mode="segregated", prefix=prefix, db_url=db_url, hosts=[[hosts[0]], [hosts[1]]]
    )
    primary, backup = pair
    sender = None
    to_active: list[float] = []
    to_stored: list[float] = []
    try:
        for broker in brokers:
            say(f"  starting the {broker.workdir.name} broker")
            broker.start()
        primary.start()
        wait_until(lambda: role_of(primary) == "active", 60, "the primary active")
        backup.start()
        sender = PacedSender(hosts, prefix, rate=RATE, id_prefix=prefix).start()
        with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
            for number in range(rounds):
                wait_until(
                    lambda: role_of(primary) == "active" and role_of(backup) == "standby",
                    90,
                    "the primary active and the backup standing by",
                )
                wait_until(
                    lambda: sender.client.current_host == hosts[0], 60, "producer on the primary"
                )
                before = primary.status()["stored"]
                wait_until(lambda b=before: primary.status()["stored"] > b, 30, "reports stored")
                # The primary's host goes: its broker with it.
                took_active, took_stored = _round(
                    pair, primary, sender, conn, host_broker=brokers[0]
                )
                to_active.append(took_active)
                to_stored.append(took_stored)
                say(
                    f"  segregated round {number + 1}/{rounds}: backup active after "
                    f"{took_active:.2f} s, first report stored after {took_stored:.2f} s"
                )
                brokers[0].start()
                primary.start()
    finally:
        if sender is not None:
            sender.stop()
        for instance in pair:
            instance.stop(timeout_s=15)
        for broker in brokers:
            broker.stop(timeout_s=20)
    return {"to_active": summary(to_active), "to_first_stored": summary(to_stored)}


def run(servers: Servers, *, rounds: int) -> dict[str, Any]:
    target = SESSION_TIMEOUT_S + 1.0
    result: dict[str, Any] = {"session_timeout_s": SESSION_TIMEOUT_S, "target_p99_s": target}
    say(f"shared pair: {rounds} rounds")
    result["shared"] = _shared(servers, rounds)
    say(f"segregated pair (host lost): {rounds} rounds")
    result["segregated"] = _segregated(servers, rounds)
    return result
