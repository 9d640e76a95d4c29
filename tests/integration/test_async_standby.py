"""Asynchronous replication: a promoted standby lacks the primary's last commits, and the server
gives them to it again from the journal segments it retained.
"""

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reporting.harness.flow import assert_exactly_once
from reporting.harness.replica import PostgresPair
from reporting.harness.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def async_pair(tmp_path: Path) -> Iterator[PostgresPair]:
    with PostgresPair(tmp_path / "pg", synchronous=False) as databases:
        yield databases


def _rewound(listen: str) -> float:
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("reporting_positions_rewound_total "):
                return float(line.split()[1])
    return 0.0


def test_commits_lost_by_a_promoted_async_standby_are_replayed(
    standalone, async_pair: PostgresPair, flowing
) -> None:
    url = async_pair.create_database("reports_async")
    # Small segments, so that drained ones would be released if they were not retained.
    server = standalone(
        database={"url": url},
        broker={"max_body_bytes": 16384},
        journal={"retain": 600.0, "segment_bytes": 65536},
    )
    server.start()
    flow = flowing([server], count=3000, rate=200)
    # The standby goes away while the primary goes on committing: those commits exist only on
    # the primary when it dies, as after a burst that replication had not caught up on.
    async_pair.standby.kill()
    mark = server.status()["stored"]
    wait_until(lambda: server.status()["stored"] > mark + 200, 30, "commits the standby lacks")
    async_pair.primary.kill()
    async_pair.standby.start()
    async_pair.promote()
    promoted = time.monotonic()
    wait_until(lambda: _rewound(server.listen) > 0, 60, "the server to notice the lost commits")
    print(f"\nlost commits noticed {time.monotonic() - promoted:.2f} s after the promotion")
    assert_exactly_once(url, flow.join())
