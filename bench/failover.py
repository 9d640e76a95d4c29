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
from collections.abc import Callable
from typing import Any

import psycopg

from bench.load import PacedSender
from bench.servers import SESSION_TIMEOUT_S, Servers, role_of, say
from reporting.harness import ActiveMQ
from reporting.harness.instance import Instance
from reporting.harness.pair import Pair
from reporting.harness.waiting import wait_until

POLL_S = 0.02
RATE = 200  # reports/s of load during the rounds
# A mode whose rounds keep failing stops after this many: each failed round costs a minute.
MAX_FAILED_ROUNDS = 3


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
    pair: Pair, active: Instance, sender: PacedSender, conn: psycopg.Connection
) -> tuple[float | None, float | None, str]:
    """(seconds to the other active, seconds to the first new report stored, what went wrong);
    a time is None when it did not happen within a minute."""
    other = pair[1] if active is pair[0] else pair[0]
    killed = time.monotonic()
    pair.lose_host(active)
    # The first report sent once everything killed is gone: one sent while the host's broker was
    # still dying may have been taken (and receipted) by it, and waits there for the host to come
    # back, as segregated mode intends; it says nothing about the failover.
    killed_wall = time.time()
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
    problem = ""
    if took_active is None:
        problem = "no instance active within 60 s"
    elif took_stored is None:
        problem = (
            "no report sent after the kill for 60 s (producer stuck on "
            f"{sender.client.current_host})"
            if first is None
            else f"{first[0]}, sent after the kill, not stored within 60 s"
        )
    return took_active, took_stored, problem


def _record(
    mode: str,
    number: int,
    rounds: int,
    outcome: tuple[float | None, float | None, str],
    to_active: list[float],
    to_stored: list[float],
    problems: list[str],
) -> None:
    took_active, took_stored, problem = outcome
    if took_active is not None:
        to_active.append(took_active)
    if took_stored is not None:
        to_stored.append(took_stored)
    if problem:
        problems.append(f"round {number + 1}: {problem}")
        say(f"  {mode} round {number + 1}/{rounds}: {problem}")
        return
    say(
        f"  {mode} round {number + 1}/{rounds}: other active after {took_active:.2f} s, "
        f"first report sent after the kill stored after {took_stored:.2f} s"
    )


def _rounds(
    pair: Pair,
    rounds: int,
    db_url: str,
    sender: PacedSender,
    ready: Callable[[], Instance],
) -> dict[str, Any]:
    """`rounds` kills of the instance `ready()` returns once the pair is at rest and storing,
    each followed by its host coming back; the figures of the rounds that went through."""
    to_active: list[float] = []
    to_stored: list[float] = []
    problems: list[str] = []
    try:
        with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
            try:
                for number in range(rounds):
                    active = ready()
                    # Under load: the active is storing what is being sent.
                    before = active.status()["stored"]
                    wait_until(
                        lambda a=active, b=before: a.status()["stored"] > b, 30, "reports stored"
                    )
                    outcome = _round(pair, active, sender, conn)
                    _record(pair.mode, number, rounds, outcome, to_active, to_stored, problems)
                    if len(problems) >= MAX_FAILED_ROUNDS:
                        problems.append(f"stopped after {number + 1} rounds")
                        break
                    pair.restore_host(active)
            except TimeoutError as exc:
                # The figures of the rounds so far are kept.
                problems.append(f"round {len(to_active) + 1}: {exc}; no further rounds")
                say(f"  {exc}; no further rounds")
    finally:
        try:
            sender.stop()
        except Exception as exc:  # the rounds' figures stand; the producer's end is noted
            problems.append(f"producer: {type(exc).__name__}: {exc}")
    return {
        "to_active": summary(to_active),
        "to_first_stored": summary(to_stored),
        "failed_rounds": problems,
    }


def _shared(servers: Servers, rounds: int) -> dict[str, Any]:
    prefix = servers.prefix()
    db_url = servers.database("failover_shared")
    pair = servers.pair(mode="shared", prefix=prefix, db_url=db_url)

    def ready() -> Instance:
        # Every round kills the instance that is active then.
        active = wait_until(
            lambda: next((i for i in pair if role_of(i) == "active"), None),
            60,
            "an active instance",
        )
        standby = pair[1] if active is pair[0] else pair[0]
        wait_until(lambda: role_of(standby) == "standby", 60, "a standby")
        return active

    with pair:
        for instance in pair:
            instance.start()
        sender = PacedSender([servers.activemq.host], prefix, rate=RATE, id_prefix=prefix).start()
        return _rounds(pair, rounds, db_url, sender, ready)


def _segregated(servers: Servers, rounds: int) -> dict[str, Any]:
    prefix = servers.prefix()
    db_url = servers.database("failover_segregated")
    brokers = [ActiveMQ(servers.workdir(f"activemq-{side}")) for side in ("primary", "backup")]
    hosts = [b.host for b in brokers]
    pair = servers.pair(mode="segregated", prefix=prefix, db_url=db_url, brokers=brokers)
    primary, backup = pair

    def ready() -> Instance:
        # Each round is the loss of the primary's host, once the primary is back in its role.
        wait_until(
            lambda: role_of(primary) == "active" and role_of(backup) == "standby",
            90,
            "the primary active and the backup standing by",
        )
        wait_until(
            lambda: sender.client.current_host == hosts[0],
            60,
            "the producer back on the primary's broker",
        )
        return primary

    try:
        for broker in brokers:
            say(f"  starting the {broker.workdir.name} broker")
            broker.start()
        with pair:
            primary.start()
            wait_until(lambda: role_of(primary) == "active", 60, "the primary active")
            backup.start()
            sender = PacedSender(hosts, prefix, rate=RATE, id_prefix=prefix).start()
            return _rounds(pair, rounds, db_url, sender, ready)
    finally:
        for broker in brokers:
            broker.stop(timeout_s=20)


def run(servers: Servers, *, rounds: int) -> dict[str, Any]:
    target = SESSION_TIMEOUT_S + 1.0
    result: dict[str, Any] = {"session_timeout_s": SESSION_TIMEOUT_S, "target_p99_s": target}
    say(f"shared pair: {rounds} rounds")
    result["shared"] = _shared(servers, rounds)
    say(f"segregated pair (host lost): {rounds} rounds")
    result["segregated"] = _segregated(servers, rounds)
    return result
