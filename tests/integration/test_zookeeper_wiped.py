"""A pair whose ZooKeeper lost its data (rebuilt without its volume, or its cluster path removed
by hand) while the database kept the fence: the epochs the pair is given start again below the
fence's; the first is refused, the next taken above the fence, and every report is stored once
within a bounded wait."""

import time

import pytest

from reporting.harness.flow import assert_exactly_once
from reporting.harness.pair import Pair
from reporting.harness.waiting import wait_until
from tests.integration.conftest import nothing_stranded
from tests.integration.test_pairs import at_rest
from tests.integration.test_zookeeper_data_attacks import wipe

pytestmark = pytest.mark.integration

FAILOVERS = 6


def test_a_pair_whose_zookeeper_lost_its_data_stores_every_report(
    pair_of, zookeeper, cluster_path, pg_url, send_all
) -> None:
    pair: Pair = pair_of()
    pair.start()
    ids = send_all(50, "before")
    # The fence climbs with every failover.
    for round in range(FAILOVERS):
        victim = pair[round % 2]
        other = pair[1 - round % 2]
        victim.kill()
        wait_until(lambda o=other: o.status()["role"] == "active", 30, f"{other.name} active")
        victim.start()
        expected = at_rest(pair, victim)
        wait_until(lambda e=expected: pair.roles() == e, 60, f"the pair at rest: {expected}")
        ids |= send_all(20, f"round{round}")
    assert_exactly_once(pg_url, ids, timeout_s=30)
    before = {i.name: i.status()["epoch"] for i in pair}
    high = max(before.values())
    for instance in pair:
        instance.stop()
    wipe(zookeeper, cluster_path)
    began = time.monotonic()
    pair.start(timeout_s=60)
    after = send_all(100, "after")
    assert_exactly_once(pg_url, ids | after, timeout_s=120)
    took = time.monotonic() - began
    # One refusal tells an instance where the fence is, and its next epoch is above it (not
    # one refusal per epoch below it): each drainer is refused once or twice, whoever of the
    # two takes the role after it.
    for instance in pair:
        last_start = instance.log_path.read_text().rsplit("--- harness: starting", 1)[-1]
        refused = last_start.count("write refused by the fence")
        assert refused <= 2, (instance.name, refused)
    # Stored under an epoch at or above the fence's, reached by the refusals of the ones below
    # it: shared mode has one fence; in segregated mode each instance has its own.
    for instance in pair:
        status = instance.status()
        if status["role"] == "active":
            fence = high if pair.mode == "shared" else before[instance.name]
            assert status["epoch"] >= fence, (instance.name, status["epoch"], before)
    print(f"\n{pair.mode}: fence at {high}, stored again {took:.1f} s after the start")
    nothing_stranded(pair)
