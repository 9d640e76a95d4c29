"""Group mode under faults: no queue ever has two owners, sampled from every member's /status.

Three instances on one cluster path, reports flowing; instances killed, added, paused and cut off
from ZooKeeper. Each test keeps a ledger and checks the database for exactly-once.
"""

import time

import pytest

from reporting.harness.flow import assert_exactly_once
from reporting.harness.group import owners, spread
from reporting.harness.pair import short_name as name
from reporting.harness.waiting import wait_until
from tests.chaos.ownership import OwnershipSampler
from tests.integration.conftest import start_group

pytestmark = pytest.mark.integration

SESSION_S = 2.0


@pytest.mark.chaos
@pytest.mark.timeout(400)
def test_kill_add_and_pause_never_two_owners(group, pg_url, queues, flowing) -> None:
    """Three instances under load: kill -9 one, add one, SIGSTOP one past its session. Every
    50 ms each instance's /status is sampled: no queue may ever have two owners."""
    sampler = OwnershipSampler().start()
    try:
        members, _ = start_group(group, 3, queues)
        for instance in members:
            sampler.add(instance)
        flow = flowing(members, count=6000)

        killed = members.pop(0)
        killed.kill()
        wait_until(lambda: spread(members, queues), 30, "the killed one's queues to move")
        print(f"\nafter kill -9 of {name(killed)}: {owners(members)}")

        newcomer = group("rs-3")
        newcomer.start()
        sampler.add(newcomer)
        members.append(newcomer)
        wait_until(lambda: spread(members, queues), 30, "a share for the newcomer")
        print(f"after {name(newcomer)} joined: {owners(members)}")

        paused = members[0]
        others = members[1:]
        sampler.freeze(paused)
        paused.pause()
        wait_until(lambda: spread(others, queues), 30, "the paused one's queues to move")
        # Past its session for a while, so that its drainer and consumer resume into a group
        # that has moved on.
        time.sleep(SESSION_S)  # the fault's length, not a synchronisation
        paused.resume()
        sampler.thaw(paused)
        wait_until(lambda: spread(members, queues), 30, "the resumed one to take a share again")
        print(f"after SIGSTOP/SIGCONT of {name(paused)}: {owners(members)}")

        assert_exactly_once(pg_url, flow.join())
    finally:
        sampler.stop()
    print(f"ownership sampled {sampler.ticks} times")
    assert sampler.ticks > 100, "the sampler hardly ran"
    assert not sampler.breaches, f"queues with two owners: {sampler.breaches[:5]}"


@pytest.mark.chaos
def test_an_owner_cut_off_from_zookeeper_stands_by_before_its_queues_move(
    group, zookeeper, tcp_proxy, pg_url, queues, flowing
) -> None:
    """A partition, not a pause: rs-0 keeps running while its path to ZooKeeper is dark. It must
    stop consuming on its own before its session expires and the others take its queues."""
    zk_proxy = tcp_proxy("127.0.0.1", zookeeper.port)
    sampler = OwnershipSampler()
    cut_off = group("rs-0", ha={"zookeeper": f"127.0.0.1:{zk_proxy.port}"})
    members = [cut_off, group("rs-1"), group("rs-2")]
    for instance in members:
        instance.start()
        sampler.add(instance)
    wait_until(lambda: spread(members, queues), 30, "every queue owned, once")
    sampler.start()
    try:
        flow = flowing(members, count=3000)
        zk_proxy.blackhole()
        darkened = time.monotonic()
        wait_until(lambda: spread(members[1:], queues), 30, "rs-0's queues to move")
        print(f"\npartition: rs-0's queues owned again {time.monotonic() - darkened:.2f} s later")
        # Still running, cut off, and owning nothing.
        assert cut_off.status()["owned"] == []
        zk_proxy.heal()
        wait_until(lambda: spread(members, queues), 30, "rs-0 to take a share again")
        assert_exactly_once(pg_url, flow.join())
    finally:
        sampler.stop()
    assert sampler.ticks > 50, "the sampler hardly ran"
    assert not sampler.breaches, f"queues with two owners: {sampler.breaches[:5]}"
