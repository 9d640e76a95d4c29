"""Restart orders nobody plans: every instance drains its own journal whatever its role and
whatever order its pair came back in, and the fence moves with the role.

Every test keeps a ledger of receipted reports and checks the database for exactly-once.
"""

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from reporting.harness.commands import run_command
from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.pair import active_of, roles
from reporting.harness.waiting import wait_until
from tests.integration.conftest import nothing_stranded

pytestmark = pytest.mark.integration


def send(broker, tmp_path: Path, queue_prefix: str, *, count: int, name: str) -> set[str]:
    """`count` receipted reports to `broker` alone; their ids."""
    flow = Flow([broker.host], tmp_path / name, queue_prefix=queue_prefix, count=count, rate=0)
    flow.start().join()
    return flow.ids()


def test_restarted_backup_drains_what_its_broker_still_gets(
    segregated_pair, activemq, backup_broker, pg_url, queues, queue_prefix, tmp_path: Path
) -> None:
    pair = segregated_pair()
    primary, backup = pair.start()
    primary.kill()
    wait_until(lambda: active_of(pair) is backup, 30, "the backup active")
    primary.start()
    wait_until(
        lambda: roles(pair) == {primary.name: "active", backup.name: "standby"},
        60,
        "the backup standing down",
    )
    # The backup restarted cleanly: it comes back standby, its fence raised by its last role.
    backup.stop()
    backup.start()
    wait_until(lambda: roles(pair)[backup.name] == "standby", 30, "the backup standby")
    # A late producer still sends to the backup's broker: the standby sweep takes the reports,
    # and its drainer, under an epoch it holds, stores them.
    ids = send(backup_broker, tmp_path, queue_prefix, count=40, name="late")
    assert_exactly_once(pg_url, ids, timeout_s=30)
    status = backup.status()
    assert status["drainers"][backup.config["name"]]["state"] == "running", status
    nothing_stranded(pair)


@pytest.mark.parametrize("order", ["primary first", "backup first", "both together"])
def test_every_restart_order_with_reports_waiting_in_both_brokers(
    order, segregated_pair, activemq, backup_broker, pg_url, queues, queue_prefix, tmp_path: Path
) -> None:
    pair = segregated_pair()
    primary, backup = pair.start()
    # Each instance journals something it has not stored: the database is reachable, but both
    # stop before the next reports arrive.
    first = send(activemq, tmp_path, queue_prefix, count=200, name="first")
    assert_exactly_once(pg_url, first, timeout_s=60)
    primary.kill()
    wait_until(lambda: active_of(pair) is backup, 30, "the backup active")
    backup.kill()
    waiting = send(activemq, tmp_path, queue_prefix, count=200, name="to-primary")
    waiting |= send(backup_broker, tmp_path, queue_prefix, count=200, name="to-backup")
    if order == "primary first":
        primary.start()
        backup.start()
    elif order == "backup first":
        backup.start()
        primary.start()
    else:
        with ThreadPoolExecutor(2) as both:
            for started in [both.submit(primary.start), both.submit(backup.start)]:
                started.result()
    wait_until(
        lambda: roles(pair) == {primary.name: "active", backup.name: "standby"},
        60,
        "the primary active, the backup standby",
    )
    assert_exactly_once(pg_url, waiting | first, timeout_s=60)
    nothing_stranded(pair)


def replay(config_path: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return run_command("replay", "--config", str(config_path), timeout_s=timeout_s)


def fence_epoch(pg_url: str, cluster: str) -> int | None:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            return conn.scalar(text("SELECT epoch FROM fence WHERE cluster = :c"), {"c": cluster})
    finally:
        engine.dispose()


def test_new_holder_raises_the_fence_before_any_write(shared_pair, pg_url, cluster_path) -> None:
    pair = shared_pair()
    a, b = pair
    a.start()
    wait_until(lambda: roles([a])[a.name] == "active", 30, "rs-a active")
    b.start()
    first = a.status()["epoch"]
    wait_until(lambda: fence_epoch(pg_url, cluster_path) == first, 30, "the fence at rs-a's epoch")
    # No report flows: nothing but the role change itself can move the fence.
    a.pause()
    try:
        wait_until(lambda: active_of([b]) is b, 30, "rs-b active")
        second = b.status()["epoch"]
        assert second > first
        wait_until(
            lambda: fence_epoch(pg_url, cluster_path) == second,
            10,
            "the fence raised to rs-b's epoch with nothing written",
        )
    finally:
        a.resume()


def test_replay_refuses_while_an_instance_holds_the_role(shared_pair) -> None:
    a, b = shared_pair()
    a.start()
    wait_until(lambda: roles([a])[a.name] == "active", 30, "rs-a active")
    b.start()
    # The standby's own configuration: the journal is the one rs-a is writing.
    done = replay(b.config_path, 60)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "rs-a holds the role" in lines[0], done.stderr
    assert "after waiting" in lines[0] and "Traceback" not in done.stderr


def test_replay_drains_once_nobody_holds_the_role(
    shared_pair, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    a, b = shared_pair()
    a.start()
    wait_until(lambda: roles([a])[a.name] == "active", 30, "rs-a active")
    ids = send(activemq, tmp_path, queue_prefix, count=100, name="ids")
    assert_exactly_once(pg_url, ids, timeout_s=60)
    a.stop()
    done = replay(a.config_path, 120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replayed" in done.stderr
    assert_exactly_once(pg_url, ids, timeout_s=10)


def test_replay_right_after_a_kill_9_waits_out_the_dead_holders_session(
    shared_pair, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    """kill -9 leaves the active's lock node until its session expires: replay started at once
    waits that out instead of calling the dead instance a live holder, then drains."""
    a, _ = shared_pair()
    a.start()
    wait_until(lambda: roles([a])[a.name] == "active", 30, "rs-a active")
    ids = send(activemq, tmp_path, queue_prefix, count=100, name="ids")
    assert_exactly_once(pg_url, ids, timeout_s=60)
    a.kill()
    done = replay(a.config_path, 120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replayed" in done.stderr and "holds the role" not in done.stderr, done.stderr
    assert_exactly_once(pg_url, ids, timeout_s=10)


def test_replay_refuses_beside_a_running_instance_of_its_own_journal(
    standalone, segregated_pair, activemq, queue_prefix, tmp_path: Path
) -> None:
    solo = standalone()
    solo.start()
    pair = segregated_pair()
    pair.start()
    # Standalone and segregated journals are an instance's own: no ZooKeeper node says who
    # holds them, the journal's writer lock does.
    for instance in (solo, *pair):
        done = replay(instance.config_path, 60)
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {instance.pid}" in lines[0], done.stderr
        assert "Traceback" not in done.stderr
