"""A shared pair whose instances, broker, ZooKeeper and PostgreSQL each run in a container of the
project's images; faults are the engine's own: `docker kill` (SIGKILL), `docker pause`, and
`docker start` of the same container. Reports flow all along with receipts into a ledger, and
each test ends with the ledger against the database: nothing lost, nothing stored twice."""

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reporting.config import KINDS
from reporting.harness.containers import InstanceContainer
from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.waiting import wait_until

pytestmark = pytest.mark.containers

SESSION_S = 2.0


def roles(pair: list[InstanceContainer]) -> dict[str, str]:
    out = {}
    for instance in pair:
        answer = instance.try_status(timeout_s=0.5)
        out[instance.config["name"]] = answer["role"] if answer else "unreachable"
    return out


def the_active(pair: list[InstanceContainer]) -> InstanceContainer | None:
    actives = [i for i in pair if (i.try_status(timeout_s=0.5) or {}).get("role") == "active"]
    assert len(actives) <= 1, f"two active instances: {roles(pair)}"
    return actives[0] if actives else None


@pytest.fixture
def pair(
    tmp_path: Path, c_activemq: Any, c_zookeeper: Any, c_postgres: Any
) -> Iterator[tuple[list[InstanceContainer], str, str]]:
    """Two shared-mode instances in containers (not started): the pair, its database URL and its
    queue prefix."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    db_url = c_postgres.create_database(f"t_{uuid.uuid4().hex}")
    cluster = f"/rstest/{uuid.uuid4().hex}"
    pair = []
    for name in ("rs-a", "rs-b"):
        config = {
            "name": name,
            "ha": {
                "mode": "shared",
                "zookeeper": c_zookeeper.hosts,
                "cluster": cluster,
                "session_timeout": SESSION_S,
            },
            "broker": {
                "hosts": [c_activemq.host],
                "queues": [f"{prefix}gvp.reporting.{kind}" for kind in KINDS],
                "heartbeat_ms": 1000,
            },
            "database": {"url": db_url, "batch_records": 500},
            "journal": {"dir": str(tmp_path / "shared-journal")},
        }
        pair.append(InstanceContainer(tmp_path / name, config))
    try:
        yield pair, db_url, prefix
    finally:
        for instance in pair:
            instance.remove()


def start_pair(pair: list[InstanceContainer]) -> InstanceContainer:
    for instance in pair:
        instance.start(timeout_s=120)
    return wait_until(lambda: the_active(pair), 60, "one active instance")


def sample_roles(pair: list[InstanceContainer], stop: threading.Event) -> Callable[[], list]:
    """Samples both instances' roles every 50 ms until `stop`; returns the samples' getter."""
    samples: list[dict[str, str]] = []

    def run() -> None:
        while not stop.is_set():
            samples.append(roles(pair))
            stop.wait(0.05)

    thread = threading.Thread(target=run, name="sampler", daemon=True)
    thread.start()

    def result() -> list[dict[str, str]]:
        thread.join(10)
        return samples

    return result


def test_docker_kill_of_the_active_container_under_load(pair, c_activemq, tmp_path) -> None:
    instances, db_url, prefix = pair
    active = start_pair(instances)
    other = next(i for i in instances if i is not active)
    flow = Flow(
        [c_activemq.host], tmp_path / "ledger", queue_prefix=prefix, count=1200, rate=150
    ).start()
    wait_until(lambda: flow.sent >= 300 or flow.error, 60, "300 reports sent")

    killed_at = time.monotonic()
    active.kill()
    wait_until(lambda: the_active([other]), 30, "the other instance active")
    print(
        f"docker kill of {active.config['name']}: other active {time.monotonic() - killed_at:.1f} s"
    )

    # `docker start` of the killed container: it rejoins as standby.
    active.start(timeout_s=120)
    wait_until(lambda: roles(instances)[active.config["name"]] == "standby", 60, "rejoined standby")
    assert_exactly_once(db_url, flow.join())
    assert the_active(instances) is other


def test_database_container_killed_while_reports_flow(pair, c_activemq, c_postgres, tmp_path):
    instances, db_url, prefix = pair
    active = start_pair(instances)
    flow = Flow(
        [c_activemq.host], tmp_path / "ledger", queue_prefix=prefix, count=1200, rate=150
    ).start()
    wait_until(lambda: flow.sent >= 200 or flow.error, 60, "200 reports sent")

    c_postgres.kill()
    down = wait_until(
        lambda: (s := active.try_status()) and s["database"] == "down" and s, 30, "database down"
    )
    # While the database is away the journal holds what the broker gave.
    wait_until(
        lambda: (active.try_status() or {}).get("journal", {}).get("pending", 0) > 0,
        30,
        "reports pending in the journal",
    )
    assert down["role"] == "active"
    c_postgres.start(timeout_s=180)  # `docker start` of the same container, same data
    wait_until(lambda: (active.try_status() or {}).get("database") == "up", 60, "database up")
    assert_exactly_once(db_url, flow.join())
    assert the_active(instances) is active, "a database outage is not a reason to fail over"


def test_docker_pause_of_the_active_past_its_session(pair, c_activemq, tmp_path) -> None:
    instances, db_url, prefix = pair
    active = start_pair(instances)
    other = next(i for i in instances if i is not active)
    stop = threading.Event()
    samples = sample_roles(instances, stop)
    flow = Flow(
        [c_activemq.host], tmp_path / "ledger", queue_prefix=prefix, count=1200, rate=150
    ).start()
    try:
        wait_until(lambda: flow.sent >= 200 or flow.error, 60, "200 reports sent")
        active.pause()  # frozen by the cgroup freezer: sockets open, no answer
        wait_until(lambda: the_active([other]), 30, "the other instance active")
        time.sleep(SESSION_S)  # the paused one stays frozen past its session, as a stalled VM
        active.resume()
        wait_until(
            lambda: roles(instances)[active.config["name"]] == "standby", 60, "resumed standby"
        )
        ids = flow.join()
    finally:
        stop.set()
    both = [s for s in samples() if list(s.values()).count("active") > 1]
    assert not both, f"two active instances sampled: {both[:3]}"
    assert_exactly_once(db_url, ids)
    fenced = json.dumps(active.try_status() or {})
    print(f"resumed instance status: {fenced[:300]}")
