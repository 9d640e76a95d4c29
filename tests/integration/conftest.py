"""Fixtures for tests that run server instances against the session's harness servers.

Each test gets its own queue names (a prefix before `gvp.reporting.<kind>`), its own database and
its own journal directory, so tests sharing one ActiveMQ and one PostgreSQL cannot see each
other's reports.
"""

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reporting.harness.group import Group, spread
from reporting.harness.instance import TEST_SETTINGS, Instance, instance_config, merge
from reporting.harness.pair import Pair, build_pair
from reporting.harness.waiting import wait_until
from storage.database import Sink
from storage.errors import DatabaseError
from storage.reports import KINDS


@pytest.fixture
def queue_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def queues(queue_prefix: str) -> list[str]:
    return [f"{queue_prefix}gvp.reporting.{kind}" for kind in KINDS]


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    """Instances a test started; each is stopped (killed if it hangs) after the test, and its
    container removed if it ran in one."""
    started: list[Instance] = []
    yield started
    for instance in started:
        instance.stop(timeout_s=15)
        instance.remove()


@pytest.fixture
def standalone(
    tmp_path: Path, activemq: Any, pg_url: str, queues: list[str], instances: list[Instance]
) -> Callable[..., Instance]:
    """Builds (not starts) a standalone instance on the session's broker and a fresh database."""

    def make(name: str = "rs-solo", **overrides: dict[str, Any]) -> Instance:
        config = instance_config(
            name,
            ha={"mode": "standalone"},
            hosts=[activemq.host],
            queues=queues,
            db_url=pg_url,
            journal_dir=tmp_path / name / "journal",
            settings=TEST_SETTINGS,
        )
        instance = Instance(tmp_path / name, merge(config, overrides))
        instances.append(instance)
        return instance

    return make


class Flow:
    """Reports sent in a background thread at a steady rate, every receipted id in a ledger."""

    def __init__(
        self,
        hosts: list[str],
        ledger: Path,
        *,
        queue_prefix: str,
        count: int,
        rate: float,
        **client_options: Any,
    ) -> None:
        from reporting.wire.producer import ReportClient

        self.client = ReportClient(hosts, ledger=ledger, in_flight=50, **client_options)
        self.queue_prefix = queue_prefix
        self.ledger = ledger
        self.count = count
        self.rate = rate
        self.sent = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="flow", daemon=True)

    def _run(self) -> None:
        import random
        import time

        from reporting.samples import sample_report

        rng = random.Random(7)
        started = time.monotonic()
        try:
            for i in range(self.count):
                kind = KINDS[i % len(KINDS)]
                body = json.dumps(sample_report(kind, rng)).encode()
                destination = f"/queue/{self.queue_prefix}gvp.reporting.{kind}"
                self.client.send_raw(destination, body, report_id=f"{kind}-{uuid.uuid4().hex}")
                self.sent += 1
                if self.rate:
                    ahead = (i + 1) / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)  # pacing the producer, not synchronising the test
            self.client.flush()
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> "Flow":
        self._thread.start()
        return self

    def join(self, timeout_s: float = 300) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "producer did not finish"
        self.client.close()
        if self.error is not None:
            raise self.error

    def ids(self) -> set[str]:
        return {line for line in self.ledger.read_text().splitlines() if line}


def assert_exactly_once(db_url: str, ledger_ids: set[str], *, timeout_s: float = 120) -> None:
    """Every receipted id ends up stored, once; polls until the drain has caught up."""
    sink = Sink(db_url, cluster="verify", journal="verify")
    try:

        def all_stored() -> bool:
            try:
                counts = sink.report_id_counts(ledger_ids)
            except DatabaseError:
                # Down, or its schema not made yet by a server that started while it was down.
                return False
            return sum(1 for n in counts.values() if n >= 1) == len(ledger_ids)

        try:
            wait_until(all_stored, timeout_s, "every receipted report to be stored", every_s=0.5)
        finally:
            counts = sink.report_id_counts(ledger_ids)
            missing = [i for i in ledger_ids if counts.get(i, 0) == 0]
            doubled = [i for i, n in counts.items() if n > 1]
            assert not missing, f"{len(missing)} receipted reports missing, e.g. {missing[:5]}"
            assert not doubled, f"{len(doubled)} reports stored twice, e.g. {doubled[:5]}"
    finally:
        sink.close()


def nothing_stranded(pair: Pair) -> None:
    """Nothing left in any queue of the pair's brokers, nor undrained in its journals."""
    wait_until(lambda: not pair.left_in_brokers(), 60, "every queue of every broker empty")
    wait_until(lambda: not pair.left_in_journals(), 60, "every journal drained")


@pytest.fixture
def cluster_path() -> str:
    return f"/rstest/{uuid.uuid4().hex}"


def pair_builder(
    mode: str, brokers: list[Any], workdir: Path, request: pytest.FixtureRequest
) -> Callable[..., Pair]:
    """Builds (not starts) a pair of `mode` on the session's servers, a fresh database and this
    test's queues and cluster path; keyword arguments, by instance name, are laid over that
    instance's config."""
    zookeeper, postgres, db_url, queues, cluster, instances = (
        request.getfixturevalue(name)
        for name in ("zookeeper", "postgres", "pg_url", "queues", "cluster_path", "instances")
    )

    def make(**overrides: dict[str, Any]) -> Pair:
        pair = build_pair(
            workdir,
            mode=mode,
            brokers=brokers,
            zookeeper=zookeeper,
            postgres=postgres,
            db_url=db_url,
            queues=queues,
            cluster=cluster,
            settings=TEST_SETTINGS,
            overrides=overrides,
        )
        instances.extend(pair)
        return pair

    return make


@pytest.fixture
def shared_pair(
    tmp_path: Path, activemq: Any, request: pytest.FixtureRequest
) -> Callable[..., Pair]:
    """Two shared-storage instances: one broker, one journal directory."""
    return pair_builder("shared", [activemq], tmp_path, request)


@pytest.fixture
def group(
    tmp_path: Path,
    activemq: Any,
    zookeeper: Any,
    pg_url: str,
    queues: list[str],
    cluster_path: str,
    instances: list[Instance],
    request: pytest.FixtureRequest,
) -> Callable[..., Instance]:
    """Builds (not starts) one more group-mode instance: one broker, one journal folder for all;
    each instance lists the ones built before it as peers. In a chaos test the instances run as
    the backend says (containers under REPORTING_TEST_BACKEND=containers), elsewhere as
    processes."""
    chaos = request.node.get_closest_marker("chaos") is not None
    members = Group(
        tmp_path,
        broker_host=activemq.host,
        zookeeper_hosts=zookeeper.hosts,
        db_url=pg_url,
        queues=queues,
        cluster=cluster_path,
        settings=TEST_SETTINGS,
        instance_type=request.getfixturevalue("instance_class") if chaos else Instance,
    )

    def make(name: str, **overrides: dict[str, Any]) -> Instance:
        instance = members.add(name, **overrides)
        instances.append(instance)
        return instance

    return make


def flowing(
    members: list[Instance], broker: str, queue_prefix: str, tmp_path: Path, *, count: int
) -> Flow:
    """`count` reports sent at 300/s into a ledger, once the members have stored the first 300."""
    flow = Flow([broker], tmp_path / "ledger", queue_prefix=queue_prefix, count=count, rate=300)
    flow.start()
    wait_until(lambda: sum(i.status()["stored"] for i in members) > 300, 30, "reports flowing")
    return flow


def start_group(
    group: Callable[..., Instance], count: int, queues: list[str]
) -> tuple[list[Instance], dict[str, str]]:
    """`count` members of a group built by the `group` fixture, started, each queue owned once."""
    members = [group(f"rs-{i}") for i in range(count)]
    for instance in members:
        instance.start()
    assignment = wait_until(lambda: spread(members, queues), 30, "every queue owned, once")
    return members, assignment


@pytest.fixture
def segregated_pair(
    tmp_path: Path, activemq: Any, backup_broker: Any, request: pytest.FixtureRequest
) -> Callable[..., Pair]:
    """A segregated primary (the session's broker) and backup (its own)."""
    return pair_builder("segregated", [activemq, backup_broker], tmp_path, request)
