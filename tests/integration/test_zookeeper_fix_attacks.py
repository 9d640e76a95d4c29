"""Attacks on how the elections follow a ZooKeeper that lost or changed its data: fence refusals
that carry the fence, epoch nodes edited by hand, nodes of the election deleted while the
instances run. Each keeps a ledger of receipted reports, checks the database for exactly-once
and the instances' logs for tracebacks."""

import time
from pathlib import Path

import pytest

from reporting.ha.group import queue_key
from reporting.harness.flow import assert_exactly_once
from reporting.harness.group import spread
from reporting.harness.pair import Pair
from reporting.harness.waiting import wait_until
from tests.integration.conftest import start_group
from tests.integration.test_zookeeper_data_attacks import (
    BOUND_S,
    climb,
    no_traceback,
    set_node,
    wipe,
    zk_client,
)

pytestmark = pytest.mark.integration


def actives(pair) -> dict[str, int]:
    out = {}
    for instance in pair:
        status = instance.try_status(timeout_s=0.5) or {}
        if status.get("role") == "active":
            out[instance.name] = status.get("epoch")
    return out


def sample(pair, seconds: float) -> list[tuple[float, dict[str, int]]]:
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append((time.monotonic(), actives(pair)))
        time.sleep(0.1)  # the sampling period
    return samples


def one_epoch_twice(samples: list[tuple[float, dict[str, int]]]) -> float:
    """The longest stretch, in seconds, over which two instances said active under one epoch.
    A standby that takes the lock under an epoch the fence holds says active until its first
    claim is refused, a moment before it could write: a stretch of that moment, never one that
    lasts (as when the fence admitted the epoch and both wrote under it for good)."""
    longest, began = 0.0, None
    for at, seen in samples:
        if len(seen) > 1 and len(set(seen.values())) == 1:
            began = at if began is None else began
            longest = max(longest, at - began)
        else:
            began = None
    return longest


def test_shared_wiped_under_a_fresh_pair_never_two_writers_of_one_epoch(
    shared_pair, zookeeper, cluster_path, pg_url, producing
) -> None:
    """The holder took epoch 1 (the fence is at 1); the cluster path is deleted while reports
    flow: the standby makes the nodes again and takes the lock, and its epoch must not be the
    live holder's."""
    pair: Pair = shared_pair()
    active, _ = pair.start()
    flow = producing(count=1200, rate=200)
    try:
        wait_until(lambda: active.status()["stored"] > 100, 30, "reports flowing")
        wipe(zookeeper, cluster_path)
        samples = sample(pair, 6)
        assert_exactly_once(pg_url, flow.join(), timeout_s=BOUND_S)
    finally:
        flow.stop()
    stretch = one_epoch_twice(samples)
    assert stretch < 2.0, f"two actives under one epoch for {stretch:.1f} s: {samples[-1][1]}"
    wait_until(lambda: len(actives(pair)) == 1, 30, "one active")
    no_traceback(pair)


def test_shared_epoch_node_set_beyond_the_fence_column(
    shared_pair, zookeeper, cluster_path, pg_url, send_all
) -> None:
    pair: Pair = shared_pair()
    pair.start()
    ids = send_all(50, "before")
    assert_exactly_once(pg_url, ids, timeout_s=30)
    for instance in pair:
        instance.stop()
    set_node(zookeeper, f"{cluster_path}/epoch", str(10**30).encode())
    for instance in pair:
        instance.start()
    ids |= send_all(100, "after")

    def logged_traceback() -> bool:
        return any("Traceback" in Path(i.log_path).read_text(errors="replace") for i in pair)

    def stored() -> bool:
        try:
            assert_exactly_once(pg_url, ids, timeout_s=0)
        except Exception:  # missing, doubled, or not yet stored
            return False
        return True

    wait_until(lambda: logged_traceback() or stored(), 40, "stored, or a traceback")
    no_traceback(pair)
    assert_exactly_once(pg_url, ids, timeout_s=BOUND_S)


@pytest.mark.parametrize("data", [b" +4\n", b"3.5", b"\xff\xfe"])
def test_shared_epoch_odd_text_while_stopped(
    shared_pair, zookeeper, cluster_path, pg_url, send_all, data
) -> None:
    pair: Pair = shared_pair()
    pair.start()
    climb(pair, 2)
    for instance in pair:
        instance.stop()
    set_node(zookeeper, f"{cluster_path}/epoch", data)
    for instance in pair:
        instance.start()
    ids = send_all(100, "after")
    assert_exactly_once(pg_url, ids, timeout_s=BOUND_S)
    no_traceback(pair)


def test_shared_lock_folder_deleted_then_holder_killed(
    shared_pair, zookeeper, cluster_path, pg_url, producing
) -> None:
    pair: Pair = shared_pair()
    pair.start()
    climb(pair, 2)
    active = wait_until(pair.active, 30, "an active instance")
    standby = next(i for i in pair if i is not active)
    flow = producing(count=1000, rate=200)
    try:
        wait_until(lambda: active.status()["stored"] > 100, 30, "reports flowing")
        with zk_client(zookeeper) as client:
            transaction = client.transaction()
            for child in client.get_children(f"{cluster_path}/lock"):
                transaction.delete(f"{cluster_path}/lock/{child}")
            transaction.delete(f"{cluster_path}/lock")
            transaction.commit()
        time.sleep(1.0)  # the fault's timing: the holder dies a second after
        active.kill()
        wait_until(lambda: pair.roles()[standby.name] == "active", 30, "the standby active")
        active.start()
        assert_exactly_once(pg_url, flow.join(), timeout_s=BOUND_S)
    finally:
        flow.stop()
    no_traceback(pair)


def test_shared_paused_holder_resumed_after_a_wipe(
    shared_pair, zookeeper, cluster_path, pg_url, producing
) -> None:
    pair: Pair = shared_pair()
    pair.start()
    climb(pair, 2)
    active = wait_until(pair.active, 30, "an active instance")
    standby = next(i for i in pair if i is not active)
    old = active.status()["epoch"]
    flow = producing(count=1200, rate=200)
    try:
        wait_until(lambda: active.status()["stored"] > 100, 30, "reports flowing")
        active.pause()
        wipe(zookeeper, cluster_path)
        wait_until(
            lambda: (
                (standby.try_status() or {}).get("role") == "active"
                and standby.status()["epoch"] > old
            ),
            30,
            "the standby active above the fence",
        )
        active.resume()
        samples = sample(pair, 5)
        doubled = [seen for _, seen in samples if len(seen) > 1 and len(set(seen.values())) == 1]
        assert not doubled, doubled[-1]
        assert_exactly_once(pg_url, flow.join(), timeout_s=BOUND_S)
    finally:
        flow.stop()
    no_traceback(pair)


def test_shared_wiped_three_times_while_flowing(
    shared_pair, zookeeper, cluster_path, pg_url, producing
) -> None:
    pair: Pair = shared_pair()
    pair.start()
    climb(pair, 2)
    flow = producing(count=2000, rate=200)
    try:
        for _ in range(3):
            time.sleep(1.5)  # the fault's timing: a wipe every second and a half
            wipe(zookeeper, cluster_path)
        assert_exactly_once(pg_url, flow.join(), timeout_s=BOUND_S)
    finally:
        flow.stop()
    wait_until(lambda: sorted(pair.roles().values()) == ["active", "standby"], 30, "one active")
    no_traceback(pair)


def test_group_one_queue_folder_deleted_then_its_owner_killed(
    group, zookeeper, cluster_path, pg_url, queues, producing
) -> None:
    members, assignment = start_group(group, 3, queues)
    flow = producing(count=1200, rate=150)
    try:
        wait_until(lambda: sum(i.status()["stored"] for i in members) > 100, 30, "flowing")
        queue = queues[0]
        owner = next(i for i in members if i.config["name"] == assignment[queue])
        folder = queue_key(cluster_path, queue)
        with zk_client(zookeeper) as client:
            transaction = client.transaction()
            for child in client.get_children(folder):
                transaction.delete(f"{folder}/{child}")
            transaction.delete(folder)
            transaction.commit()
        time.sleep(1.0)  # the fault's timing
        owner.kill()
        survivors = [i for i in members if i is not owner]
        wait_until(lambda: spread(survivors, queues), 30, "every queue owned by the survivors")
        assert_exactly_once(pg_url, flow.join(), timeout_s=BOUND_S)
    finally:
        flow.stop()
    no_traceback(members)


def test_group_members_folder_deleted_then_a_member_killed(
    group, zookeeper, cluster_path, pg_url, queues, producing, send_all
) -> None:
    members, _ = start_group(group, 3, queues)
    flow = producing(count=600, rate=150)
    try:
        wait_until(lambda: sum(i.status()["stored"] for i in members) > 100, 30, "flowing")
        folder = f"{cluster_path}/members"
        with zk_client(zookeeper) as client:
            transaction = client.transaction()
            for child in client.get_children(folder):
                transaction.delete(f"{folder}/{child}")
            transaction.delete(folder)
            transaction.commit()
        ids = flow.join()
    finally:
        flow.stop()
    # Nothing is lost while every member lives: the members keep their queues.
    assert_exactly_once(pg_url, ids, timeout_s=BOUND_S)
    members[1].kill()
    survivors = [members[0], members[2]]
    try:
        wait_until(lambda: spread(survivors, queues), 30, "every queue owned by the survivors")
    finally:
        with zk_client(zookeeper) as client:
            print("members folder:", client.exists(folder))
    ids |= send_all(100, "after")
    assert_exactly_once(pg_url, ids, timeout_s=BOUND_S)
    no_traceback(members)
