"""A pair in each mode against real ActiveMQ, ZooKeeper and PostgreSQL, with reports flowing.

Shared storage: one broker and one journal directory, any one instance active. Segregated
stores: each instance consumes its own broker; the backup activates only while the primary is
gone, and drains its own broker before it stands down again. Producers send to the first
instance's broker and fail over to the other's.

The faults both modes must survive alike are one test each, run in both modes; the rest are the
mode's own. Every test keeps a ledger of receipted reports and checks the database for
exactly-once at the end; failover times are measured and printed (run with -s to see them).
The kill -9 and the fenced stale write run on MariaDB too (`on_databases`).
"""

import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.instance import Instance
from reporting.harness.pair import Pair, roles
from reporting.harness.waiting import wait_until
from tests.conftest import on_databases
from tests.integration.conftest import nothing_stranded

pytestmark = pytest.mark.integration

SESSION_S = 2.0


@pytest.fixture
def producing(queue_prefix: str, tmp_path: Path) -> Callable[..., Flow]:
    """producing(pair, count=, rate=): reports flowing to the first instance's broker, failing
    over to the other's, on the test's queues."""

    def start(pair: Pair, *, count: int, rate: int) -> Flow:
        ledger = tmp_path / "ledger"
        hosts = pair.producer_hosts
        return Flow(hosts, ledger, queue_prefix=queue_prefix, count=count, rate=rate).start()

    return start


def started_and_flowing(
    pair: Pair, producing: Callable[..., Flow], *, count: int, rate: int, stored: int
) -> tuple[Instance, Instance, Flow]:
    """(active, standby, flow) once the pair is at rest and its active has stored `stored`."""
    active, standby = pair.start()
    flow = producing(pair, count=count, rate=rate)
    wait_until(lambda: active.status()["stored"] > stored, 30, "reports flowing")
    return active, standby, flow


def at_rest(pair: Pair, returned: Instance) -> dict[str, str]:
    """The roles of the pair once `returned` is back after losing the role."""
    if pair.mode == "segregated":
        # The primary takes its role back; the backup stands down once its broker is drained.
        primary, backup = pair
        return {primary.name: "active", backup.name: "standby"}
    # Shared: no fail-back; the role stays with the one that took it over.
    other = next(i for i in pair if i is not returned)
    return {returned.name: "standby", other.name: "active"}


def back_at_rest(pair: Pair, flow: Flow, pg_url: str, returned: Instance, timeout_s: float) -> None:
    """The pair at rest again, and nothing lost, doubled or left in a broker or a journal."""
    expected = at_rest(pair, returned)
    wait_until(lambda: pair.roles() == expected, timeout_s, f"the pair at rest: {expected}")
    assert_exactly_once(pg_url, flow.join())
    nothing_stranded(pair)


# -- both modes ---------------------------------------------------------------------------------


@on_databases(mariadb_marks=pytest.mark.mariadb)
def test_kill_9_of_the_active(pair_of, db_url, producing) -> None:
    pair = pair_of()
    active, standby, flow = started_and_flowing(pair, producing, count=3000, rate=300, stored=200)
    killed = time.monotonic()
    active.kill()
    wait_until(lambda: pair.active() is standby, 30, f"{standby.name} active", every_s=0.02)
    took = time.monotonic() - killed
    print(f"\n{pair.mode} kill -9: {standby.name} active {took:.2f} s after the kill")
    assert took <= SESSION_S + 1.0, f"failover took {took:.2f} s"
    active.start()
    back_at_rest(pair, flow, db_url, active, timeout_s=60)


def test_sigterm_hands_over_within_a_second(pair_of, pg_url, producing) -> None:
    pair = pair_of()
    active, standby, flow = started_and_flowing(pair, producing, count=2000, rate=300, stored=200)
    # Timed from the signal, not from the old process's exit, which the handover does not wait on.
    asked = time.monotonic()
    os.kill(active.pid, signal.SIGTERM)
    wait_until(lambda: pair.active() is standby, 10, f"{standby.name} active", every_s=0.02)
    took = time.monotonic() - asked
    active.stop()
    print(f"\n{pair.mode} SIGTERM: {standby.name} active {took:.2f} s after the signal")
    assert took <= 1.0, f"clean handover took {took:.2f} s"
    active.start()
    back_at_rest(pair, flow, pg_url, active, timeout_s=60)


def test_zookeeper_restart_never_shows_two_actives(pair_of, zookeeper, pg_url, producing) -> None:
    pair = pair_of()
    active, _ = pair.start()
    flow = producing(pair, count=2000, rate=200)
    samples: list[dict[str, str]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(pair.roles())
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    zookeeper.kill()
    time.sleep(SESSION_S * 2)  # the outage itself: ZooKeeper stays dead past the session
    zookeeper.restart()
    wait_until(lambda: pair.active() is not None, 60, "an active instance after the restart")
    flow.join()
    stop.set()
    sampler.join()
    doubled = [s for s in samples if list(s.values()).count("active") > 1]
    print(f"\n{pair.mode} ZooKeeper restart: {len(samples)} samples, {len(doubled)} two actives")
    assert len(samples) > 20 and not doubled, f"two actives seen: {doubled[:3]}"
    if pair.mode == "segregated":
        # The primary holds its role without ZooKeeper: only its node's absence moves it.
        assert all(s[active.name] == "active" for s in samples), "the primary lost its role"
    assert_exactly_once(pg_url, flow.ids())


def test_database_down_during_failover_is_replayed(pair_of, postgres, pg_url, producing) -> None:
    pair = pair_of()
    active, standby, flow = started_and_flowing(pair, producing, count=2000, rate=200, stored=100)
    postgres.kill()
    wait_until(lambda: active.status()["journal"]["pending"] > 0, 30, "a backlog in the journal")
    # Segregated: its broker goes too, so that producers fail over to the other's.
    pair.lose_host(active)
    wait_until(lambda: pair.active() is standby, 30, f"{standby.name} active")
    wait_until(lambda: standby.status()["journal"]["pending"] > 0, 60, f"{standby.name} buffering")
    postgres.restart()
    pair.restore_host(active)
    back_at_rest(pair, flow, pg_url, active, timeout_s=90)


# -- shared storage -----------------------------------------------------------------------------


@on_databases(mariadb_marks=pytest.mark.mariadb)
def test_paused_active_is_fenced_when_it_resumes(
    shared_pair, activemq, database, tcp_proxy, db_url, queue_prefix, tmp_path: Path
) -> None:
    # rs-a reaches the database through a proxy that holds what it is sent while dark. The path
    # goes dark while rs-a has drained everything, so its next drain transaction is caught
    # there whole, before the database saw any of it; then rs-a is paused and rs-b takes over
    # and stores under the newer epoch. Resumed, rs-a steps down on its own, but the
    # transaction it had already sent under its old epoch still reaches the database once the
    # path is back: that write is the one the fence must refuse.
    db_proxy = tcp_proxy("127.0.0.1", database.port)
    a_url = db_url.replace(f":{database.port}/", f":{db_proxy.port}/")
    pair = shared_pair(**{"rs-a": {"database": {"url": a_url}}})
    a, b = pair
    a.start()
    wait_until(lambda: roles([a])[a.name] == "active", 30, "rs-a active")
    b.start()
    wait_until(lambda: pair.roles()[b.name] == "standby", 30, "rs-b standby")
    first = Flow([activemq.host], tmp_path / "l1", queue_prefix=queue_prefix, count=300, rate=0)
    first.start().join()
    wait_until(lambda: a.status()["journal"]["pending"] == 0, 30, "rs-a to store them all")
    db_proxy.blackhole()
    flow = Flow(
        [activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=2000, rate=200
    )
    flow.start()
    wait_until(lambda: a.status()["journal"]["pending"] > 0, 30, "rs-a holding unstored reports")
    a.pause()
    paused = time.monotonic()
    wait_until(lambda: pair.active() is b, 30, "rs-b active", every_s=0.02)
    print(f"\nSIGSTOP: {b.name} active {time.monotonic() - paused:.2f} s after the pause")
    wait_until(lambda: b.status()["stored"] > 0, 30, "rs-b storing under the newer epoch")
    a.resume()
    wait_until(lambda: pair.roles()[a.name] == "standby", 30, "rs-a to step down")
    assert _fenced(a) == 0
    db_proxy.heal()
    wait_until(lambda: _fenced(a) > 0, 30, "rs-a's stale write to be refused by the fence")
    expected = {a.name: "standby", b.name: "active"}
    wait_until(lambda: pair.roles() == expected, 30, "roles to settle")
    flow.join()
    assert_exactly_once(db_url, first.ids() | flow.ids())


def _fenced(instance: Instance) -> float:
    with urllib.request.urlopen(f"http://{instance.listen}/metrics", timeout=2) as reply:
        metrics = reply.read().decode()
    for line in metrics.splitlines():
        if line.startswith("reporting_fenced_writes_total "):
            return float(line.split()[1])
    return 0.0


# -- segregated stores --------------------------------------------------------------------------


def test_primary_host_lost_with_its_broker(segregated_pair, pg_url, producing) -> None:
    pair = segregated_pair()
    primary, backup, flow = started_and_flowing(pair, producing, count=3000, rate=150, stored=100)
    # The whole primary host goes: its instance and its broker together.
    pair.lose_host(primary)
    wait_until(lambda: pair.active() is backup, 30, "the backup active")
    wait_until(lambda: backup.status()["stored"] > 100, 60, "the backup storing what was sent")
    pair.restore_host(primary)
    back_at_rest(pair, flow, pg_url, primary, timeout_s=90)


def test_paused_primary_resumes_and_the_backup_stands_down(
    segregated_pair, pg_url, producing
) -> None:
    # Each instance stores only what its own broker gave it, under its own fence, so a resumed
    # primary has no stale writes to refuse: it takes its role back and the backup drains its
    # own broker, then stands down.
    pair = segregated_pair()
    primary, backup, flow = started_and_flowing(pair, producing, count=2000, rate=200, stored=100)
    primary.pause()
    paused = time.monotonic()
    wait_until(lambda: pair.roles()[backup.name] == "active", 30, "the backup active")
    print(f"\nSIGSTOP of the primary: backup active after {time.monotonic() - paused:.2f} s")
    primary.resume()
    back_at_rest(pair, flow, pg_url, primary, timeout_s=60)
