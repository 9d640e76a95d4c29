"""ZooKeeper losing or changing its data under a running or stopped pair or group, as an operator
could meet it: the cluster path deleted (a ZooKeeper rebuilt without its volume, a cleanup by
hand) while reports flow, and the epoch node set by hand to a low number or to text that is no
number. Every test keeps a ledger of receipted reports and checks the database for exactly-once
within a bounded wait, and that the instances logged no traceback for the fault."""

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.group import spread
from reporting.harness.instance import Instance
from reporting.harness.pair import Pair
from reporting.harness.pair import short_name as name
from reporting.harness.waiting import wait_until
from tests.integration.conftest import start_group

pytestmark = pytest.mark.integration

# How long reports may take to be stored again after the fault: far beyond a session.
BOUND_S = 120


@contextmanager
def zk_client(zookeeper) -> Iterator[KazooClient]:
    client = KazooClient(hosts=zookeeper.hosts, timeout=5)
    client.start(timeout=30)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def wipe(zookeeper, cluster: str) -> None:
    """The cluster path and everything under it gone at once, ephemeral nodes of live sessions
    too: one multi-operation, deepest first, as zkCli's `deleteall` sends a small tree (a delete
    node by node would let a contender woken in between create its node again)."""
    with zk_client(zookeeper) as client:
        while True:
            nodes, todo = [], [cluster]
            while todo:
                path = todo.pop()
                nodes.append(path)
                todo.extend(f"{path}/{child}" for child in client.get_children(path))
            transaction = client.transaction()
            for path in sorted(nodes, key=lambda p: -p.count("/")):
                transaction.delete(path)
            if all(result is True for result in transaction.commit()):
                return


def set_node(zookeeper, path: str, data: bytes) -> None:
    with zk_client(zookeeper) as client:
        client.retry(client.ensure_path, path)
        client.retry(client.set, path, data)


def no_traceback(instances: Iterable[Instance]) -> None:
    """A fault of the operator's is one clear log line, never a traceback."""
    for instance in instances:
        text = Path(instance.log_path).read_text(errors="replace")
        assert "Traceback" not in text, (
            f"{instance.name} logged a traceback:\n"
            + text[text.index("Traceback") - 300 : text.index("Traceback") + 1500]
        )


def climb(pair: Pair, rounds: int) -> None:
    """The fence raised by `rounds` clean hand-overs (SIGTERM, then a restart)."""
    for _ in range(rounds):
        active = wait_until(pair.active, 30, "an active instance")
        active.stop()
        wait_until(lambda a=active: pair.active() not in (None, a), 30, "the other active")
        active.start()
        wait_until(lambda a=active: pair.roles()[a.name] == "standby", 30, "back as standby")


# -- the cluster path deleted while a shared pair runs ------------------------------------------


@pytest.mark.parametrize("fault", ["kill", "sigterm"])
def test_shared_wiped_while_running_then_the_active_goes(
    shared_pair, zookeeper, cluster_path, pg_url, producing, fault
) -> None:
    pair: Pair = shared_pair()
    active, standby = pair.start()
    climb(pair, 2)
    active = wait_until(pair.active, 30, "an active instance")
    standby = next(i for i in pair if i is not active)
    flow = producing(count=1500, rate=150)
    wait_until(lambda: active.status()["stored"] > 100, 30, "reports flowing")
    wipe(zookeeper, cluster_path)
    time.sleep(1.0)  # the fault's timing: the instance goes a second after the wipe
    if fault == "kill":
        active.kill()
    else:
        active.stop()
    try:
        wait_until(lambda: pair.roles()[standby.name] == "active", 30, f"{standby.name} active")
        active.start()
        assert_exactly_once(pg_url, flow.join(), timeout_s=BOUND_S)
    finally:
        flow.stop()
    assert "is gone; creating them again" in standby.log_path.read_text()
    no_traceback(pair)


def test_shared_wiped_while_running_keeps_storing(
    shared_pair, zookeeper, cluster_path, pg_url, producing
) -> None:
    """No instance goes: the active keeps its lock in mind and its epoch, and stores on."""
    pair: Pair = shared_pair()
    active, _ = pair.start()
    flow = producing(count=1200, rate=200)
    wait_until(lambda: active.status()["stored"] > 100, 30, "reports flowing")
    wipe(zookeeper, cluster_path)
    assert_exactly_once(pg_url, flow.join(), timeout_s=BOUND_S)
    no_traceback(pair)


def test_shared_epoch_reset_and_lock_cleared_under_a_running_pair(
    shared_pair, zookeeper, cluster_path, pg_url, producing
) -> None:
    pair: Pair = shared_pair()
    pair.start()
    climb(pair, 3)
    active = wait_until(pair.active, 30, "an active instance")
    flow = producing(count=1200, rate=200)
    wait_until(lambda: active.status()["stored"] > 100, 30, "reports flowing")
    set_node(zookeeper, f"{cluster_path}/epoch", b"0")
    with zk_client(zookeeper) as client:
        for child in client.get_children(f"{cluster_path}/lock"):
            client.delete(f"{cluster_path}/lock/{child}")
    samples = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        samples.append(
            {
                i.name: (i.try_status() or {}).get("epoch")
                for i in (i for i in pair if (i.try_status() or {}).get("role") == "active")
            }
        )
        time.sleep(0.1)
    try:
        # The new holder's epoch is above the fence: the old holder's next write is refused and
        # it stands by; until then both may say active, but never under the same token.
        doubled = [s for s in samples if len(s) > 1 and len(set(s.values())) == 1]
        assert not doubled, f"two actives: {doubled[-1]} in {len(doubled)} of {len(samples)}"
        wait_until(
            lambda: len([r for r in pair.roles().values() if r == "active"]) == 1, 30, "one active"
        )
    finally:
        assert_exactly_once(pg_url, flow.join(), timeout_s=BOUND_S)
    no_traceback(pair)


# -- the epoch node set by hand -----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"1",
        b"-5",
        b"abc",
    ],
)
def test_shared_epoch_set_by_hand_while_stopped(
    shared_pair, zookeeper, cluster_path, pg_url, send_all, data
) -> None:
    pair: Pair = shared_pair()
    pair.start()
    climb(pair, 2)
    ids = send_all(50, "before")
    assert_exactly_once(pg_url, ids, timeout_s=30)
    for instance in pair:
        instance.stop()
    set_node(zookeeper, f"{cluster_path}/epoch", data)
    for instance in pair:
        instance.start()
    ids |= send_all(100, "after")
    assert_exactly_once(pg_url, ids, timeout_s=BOUND_S)
    no_traceback(pair)


# -- group mode ---------------------------------------------------------------------------------


def test_group_wiped_while_running_then_a_member_dies(
    group, zookeeper, cluster_path, pg_url, queues, producing
) -> None:
    members, assignment = start_group(group, 3, queues)
    flow = producing(count=1500, rate=150)
    wait_until(lambda: sum(i.status()["stored"] for i in members) > 100, 30, "reports flowing")
    wipe(zookeeper, cluster_path)
    time.sleep(1.0)  # the fault's timing: the instance goes a second after the wipe
    victim = next(i for i in members if list(assignment.values()).count(name(i)) == 1)
    victim.kill()
    survivors = [i for i in members if i is not victim]
    try:
        wait_until(lambda: spread(survivors, queues), 30, "every queue owned by the survivors")
        assert_exactly_once(pg_url, flow.join(), timeout_s=BOUND_S)
    finally:
        flow.stop()
    for survivor in survivors:
        assert "is gone; creating them again" in survivor.log_path.read_text(), survivor.name
    no_traceback(members)


def test_group_wiped_while_stopped(
    group, zookeeper, cluster_path, pg_url, queues, send_all
) -> None:
    members, _ = start_group(group, 2, queues)
    ids = send_all(40, "before")
    # Every restart moves each queue to an owner under a new epoch: the fences climb.
    for _ in range(3):
        for instance in members:
            instance.stop()
        for instance in members:
            instance.start()
        wait_until(lambda: spread(members, queues), 30, "every queue owned once")
    ids |= send_all(40, "between")
    assert_exactly_once(pg_url, ids, timeout_s=30)
    for instance in members:
        instance.stop()
    wipe(zookeeper, cluster_path)
    for instance in members:
        instance.start()
    ids |= send_all(100, "after")
    assert_exactly_once(pg_url, ids, timeout_s=BOUND_S)
    no_traceback(members)


# -- segregated mode ----------------------------------------------------------------------------


def test_segregated_wiped_while_running_then_the_primary_killed(
    segregated_pair, zookeeper, cluster_path, pg_url, queue_prefix, tmp_path
) -> None:
    pair: Pair = segregated_pair()
    primary, backup = pair.start()
    flow = Flow(
        pair.producer_hosts, tmp_path / "ledger", queue_prefix=queue_prefix, count=1500, rate=150
    ).start()
    try:
        wait_until(lambda: primary.status()["stored"] > 100, 30, "reports flowing")
        wipe(zookeeper, cluster_path)
        time.sleep(1.0)  # the fault's timing: the primary goes a second after the wipe
        primary.kill()
        wait_until(lambda: pair.roles()[backup.name] == "active", 30, f"{backup.name} active")
        primary.start()
        assert_exactly_once(pg_url, flow.join(), timeout_s=BOUND_S)
    finally:
        flow.stop()
    wait_until(
        lambda: pair.roles() == {primary.name: "active", backup.name: "standby"},
        60,
        "the pair at rest",
    )
    no_traceback(pair)
