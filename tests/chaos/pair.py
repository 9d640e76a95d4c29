"""The pair a chaos run drives: its instances and the servers and network paths it depends on.

A run needs to know, per mode, which servers the faults may hit and how a producer reaches the
pair. `SharedPair` is one broker and one journal directory for both instances; a segregated pair
(a broker per instance) plugs in by giving the same attributes with `brokers` holding one broker
per instance, and enables the faults whose `modes` name "segregated".
"""

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from reporting.config import KINDS
from reporting.harness import ActiveMQ, Postgres, Service, TcpProxy, ZooKeeper
from reporting.harness.instance import Instance


class Pair(Protocol):
    """What the runner and the faults use of a pair."""

    mode: str
    instances: list[Instance]
    # Each instance's own broker (shared mode: the one broker under every name).
    brokers: dict[str, ActiveMQ]
    zookeeper: ZooKeeper
    postgres: Postgres
    db_url: str
    queues: list[str]
    # Each instance's path to ZooKeeper, which a fault can darken.
    zookeeper_paths: dict[str, TcpProxy]
    session_timeout_s: float

    @property
    def producer_hosts(self) -> list[str]: ...

    def services(self) -> list[Service]: ...


def short_name(instance: Instance) -> str:
    """The instance's configured name (rs-a), as /status and the logs say it."""
    return str(instance.config["name"])


@dataclass
class SharedPair:
    """Two shared-storage instances (built, not started) on one broker and one journal directory."""

    instances: list[Instance]
    brokers: dict[str, ActiveMQ]
    zookeeper: ZooKeeper
    postgres: Postgres
    db_url: str
    queues: list[str]
    zookeeper_paths: dict[str, TcpProxy]
    session_timeout_s: float
    mode: str = "shared"
    workdir: Path = field(default_factory=Path)

    @property
    def producer_hosts(self) -> list[str]:
        return [self.brokers[short_name(self.instances[0])].host]

    def services(self) -> list[Service]:
        """Every server the pair depends on, each once."""
        unique: dict[int, Service] = {}
        for service in (*self.brokers.values(), self.zookeeper, self.postgres):
            unique.setdefault(id(service), service)
        return list(unique.values())

    def close(self) -> None:
        """Stop both instances (SIGKILL if they hang) and the ZooKeeper paths."""
        for instance in self.instances:
            if instance.is_paused():
                instance.resume()
            instance.stop(timeout_s=15)
        for proxy in self.zookeeper_paths.values():
            proxy.stop()

    def __enter__(self) -> "SharedPair":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def build_shared_pair(
    workdir: Path,
    *,
    broker: ActiveMQ,
    zookeeper: ZooKeeper,
    postgres: Postgres,
    session_timeout_s: float = 2.0,
    names: tuple[str, str] = ("rs-a", "rs-b"),
) -> SharedPair:
    """A shared pair with its own database, queue names, ZooKeeper path and journal directory,
    so several runs can share the servers. Each instance reaches ZooKeeper through a proxy."""
    tag = uuid.uuid4().hex[:10]
    db_url = postgres.create_database(f"chaos_{tag}")
    queues = [f"c{tag}.gvp.reporting.{kind}" for kind in KINDS]
    cluster = f"/chaos/{tag}"
    instances: list[Instance] = []
    paths: dict[str, TcpProxy] = {}
    for name in names:
        paths[name] = TcpProxy("127.0.0.1", zookeeper.port).start()
        config: dict[str, Any] = {
            "name": name,
            "ha": {
                "mode": "shared",
                "zookeeper": paths[name].host,
                "cluster": cluster,
                "session_timeout": session_timeout_s,
            },
            "broker": {"hosts": [broker.host], "queues": queues, "heartbeat_ms": 1000},
            "database": {"url": db_url, "batch_records": 500},
            "journal": {"dir": str(workdir / "shared-journal")},
        }
        instances.append(Instance(workdir / name, config))
    for instance, other in ((instances[0], instances[1]), (instances[1], instances[0])):
        instance.config["ha"]["peers"] = [other.listen]
    return SharedPair(
        instances=instances,
        brokers=dict.fromkeys(names, broker),
        zookeeper=zookeeper,
        postgres=postgres,
        db_url=db_url,
        queues=queues,
        zookeeper_paths=paths,
        session_timeout_s=session_timeout_s,
        workdir=workdir,
    )
