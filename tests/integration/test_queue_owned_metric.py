"""reporting_queue_owned{queue}: what the group alerts (a queue without an owner, a queue with
two) read, served by group members as /status says they own."""

import re
import urllib.request
from collections.abc import Callable

import pytest

from reporting.harness.instance import Instance
from reporting.harness.waiting import wait_until

pytestmark = pytest.mark.integration


def owned(instance: Instance) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{instance.listen}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        queue: float(value)
        for queue, value in re.findall(
            r'^reporting_queue_owned\{queue="([^"]+)"\} (\S+)$', text, re.M
        )
    }


def test_group_members_serve_their_queue_ownership(
    group: Callable[..., Instance], queues: list[str]
) -> None:
    first, second = group("rs-g1"), group("rs-g2")
    first.start()
    wait_until(lambda: set(first.status()["owned"]) == set(queues), 30, "rs-g1 to own all queues")
    assert owned(first) == {queue: 1.0 for queue in queues}
    second.start()

    def split() -> bool:
        # Each its whole share (4 queues over 2): while one owns 3 and the other 1, a queue is
        # still on its way, and the reads below would each see a different moment of the move.
        mine, theirs = set(first.status()["owned"]), set(second.status()["owned"])
        share = len(queues) // 2
        return len(mine) == len(theirs) == share and mine | theirs == set(queues)

    wait_until(split, 60, "the queues to be shared out, two each")
    first_owned, second_owned = owned(first), owned(second)
    assert set(first_owned) == set(second_owned) == set(queues)
    for queue in queues:
        assert first_owned[queue] + second_owned[queue] == 1.0, (queue, first_owned, second_owned)
    assert {q for q, v in first_owned.items() if v} == set(first.status()["owned"])
