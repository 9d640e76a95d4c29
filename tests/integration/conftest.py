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

from reporting.harness.instance import Instance
from storage.database import Sink
from storage.errors import DatabaseError
from storage.reports import KINDS


@pytest.fixture
def queue_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def queues(queue_prefix: str) -> list[str]:
    return [f"{queue_prefix}gvp.reporting.{kind}" for kind in KINDS]


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in overrides.items():
        if isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    """Instances a test started; each is stopped (killed if it hangs) after the test."""
    started: list[Instance] = []
    yield started
    for instance in started:
        instance.stop(timeout_s=15)


@pytest.fixture
def standalone(
    tmp_path: Path, activemq: Any, pg_url: str, queues: list[str], instances: list[Instance]
) -> Callable[..., Instance]:
    """Builds (not starts) a standalone instance on the session's broker and a fresh database."""

    def make(name: str = "rs-solo", **overrides: dict[str, Any]) -> Instance:
        config = {
            "name": name,
            "ha": {"mode": "standalone"},
            "broker": {"hosts": [activemq.host], "queues": queues, "heartbeat_ms": 1000},
            "database": {"url": pg_url, "batch_records": 500},
            "journal": {"dir": str(tmp_path / name / "journal")},
        }
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


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.1
) -> Any:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


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
            wait_for(all_stored, timeout_s, "every receipted report to be stored", every_s=0.5)
        finally:
            counts = sink.report_id_counts(ledger_ids)
            missing = [i for i in ledger_ids if counts.get(i, 0) == 0]
            doubled = [i for i, n in counts.items() if n > 1]
            assert not missing, f"{len(missing)} receipted reports missing, e.g. {missing[:5]}"
            assert not doubled, f"{len(doubled)} reports stored twice, e.g. {doubled[:5]}"
    finally:
        sink.close()


@pytest.fixture
def cluster_path() -> str:
    return f"/rstest/{uuid.uuid4().hex}"


def build_pair(
    tmp_path: Path,
    members: list[tuple[str, dict[str, Any], Any, str]],
    ha: dict[str, Any],
    pg_url: str,
    queues: list[str],
    instances: list[Instance],
    overrides: dict[str, dict[str, Any]],
) -> list[Instance]:
    """Two instances (name, extra [ha] keys, broker, journal dir) that know each other."""
    pair = []
    for name, ha_extra, broker, journal_dir in members:
        config = {
            "name": name,
            "ha": {**ha, **ha_extra, "session_timeout": 2.0},
            "broker": {"hosts": [broker.host], "queues": queues, "heartbeat_ms": 1000},
            "database": {"url": pg_url, "batch_records": 500},
            "journal": {"dir": str(tmp_path / journal_dir)},
        }
        instance = Instance(tmp_path / name, merge(config, overrides.get(name, {})))
        instances.append(instance)
        pair.append(instance)
    pair[0].config["ha"]["peers"] = [pair[1].listen]
    pair[1].config["ha"]["peers"] = [pair[0].listen]
    return pair


@pytest.fixture
def shared_pair(
    tmp_path: Path,
    activemq: Any,
    zookeeper: Any,
    pg_url: str,
    queues: list[str],
    cluster_path: str,
    instances: list[Instance],
) -> Callable[..., list[Instance]]:
    """Builds (not starts) two shared-storage instances: one broker, one journal directory."""

    def make(**overrides: dict[str, Any]) -> list[Instance]:
        members = [(name, {}, activemq, "shared-journal") for name in ("rs-a", "rs-b")]
        ha = {"mode": "shared", "zookeeper": zookeeper.hosts, "cluster": cluster_path}
        return build_pair(tmp_path, members, ha, pg_url, queues, instances, overrides)

    return make


@pytest.fixture
def group(
    tmp_path: Path,
    activemq: Any,
    zookeeper: Any,
    pg_url: str,
    queues: list[str],
    cluster_path: str,
    instances: list[Instance],
) -> Callable[..., Instance]:
    """Builds (not starts) one more group-mode instance: one broker, one journal folder for all;
    each instance lists the ones built before it as peers."""
    members: list[Instance] = []

    def make(name: str, **overrides: dict[str, Any]) -> Instance:
        config = {
            "name": name,
            "ha": {
                "mode": "group",
                "zookeeper": zookeeper.hosts,
                "cluster": cluster_path,
                "session_timeout": 2.0,
                "peers": [m.listen for m in members],
            },
            "broker": {"hosts": [activemq.host], "queues": queues, "heartbeat_ms": 1000},
            "database": {"url": pg_url, "batch_records": 500},
            "journal": {"dir": str(tmp_path / "group-journal")},
        }
        instance = Instance(tmp_path / name, merge(config, overrides))
        instances.append(instance)
        members.append(instance)
        return instance

    return make


def roles(pair: list[Instance]) -> dict[str, str]:
    """Each instance's role as its /status says, or "unreachable"."""
    out = {}
    for instance in pair:
        status = instance.try_status(timeout_s=0.5)
        out[instance.name] = status["role"] if status else "unreachable"
    return out


def active_of(pair: list[Instance]) -> Instance | None:
    actives = [i for i in pair if (i.try_status(timeout_s=0.5) or {}).get("role") == "active"]
    assert len(actives) <= 1, f"two active instances: {roles(pair)}"
    return actives[0] if actives else None


@pytest.fixture
def backup_broker(tmp_path: Path) -> Iterator[Any]:
    """A second ActiveMQ, the segregated backup's own store."""
    from reporting.harness import ActiveMQ

    broker = ActiveMQ(tmp_path / "backup-activemq")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def segregated_pair(
    tmp_path: Path,
    activemq: Any,
    backup_broker: Any,
    zookeeper: Any,
    pg_url: str,
    queues: list[str],
    cluster_path: str,
    instances: list[Instance],
) -> Callable[..., list[Instance]]:
    """Builds (not starts) a segregated primary (the session's broker) and backup (its own)."""

    def make(**overrides: dict[str, Any]) -> list[Instance]:
        members = [
            ("rs-p", {"role": "primary"}, activemq, "rs-p/journal"),
            ("rs-b", {"role": "backup"}, backup_broker, "rs-b/journal"),
        ]
        ha = {"mode": "segregated", "zookeeper": zookeeper.hosts, "cluster": cluster_path}
        return build_pair(tmp_path, members, ha, pg_url, queues, instances, overrides)

    return make
