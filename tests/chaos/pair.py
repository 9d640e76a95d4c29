"""The pairs a chaos run drives: their instances and the servers and network paths they depend on.

A run needs to know, per mode, which servers the faults may hit, how a producer reaches the pair,
what "settled" means and whether two actives at once break a guarantee.

- Shared storage: one broker and one journal directory; any one instance active, the other
  standby, and never two actives (one store, one writer).
- Segregated stores: a broker and a journal per instance; settled is the primary active and the
  backup standby. Two actives are expected while the backup drains its own broker after the
  primary came back (each store still has one consumer), so that is no breach there.
"""

import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from reporting.harness import ActiveMQ, Postgres, Service, TcpProxy, ZooKeeper
from reporting.harness.instance import Instance
from storage.reports import KINDS


def short_name(instance: Instance) -> str:
    """The instance's configured name (rs-a), as /status and the logs say it."""
    return str(instance.config["name"])


@dataclass
class Pair:
    """Two instances (built, not started) and what they run on; `close` stops the instances."""

    mode: str
    instances: list[Instance]
    # Each instance's own broker (shared mode: the one broker under both names).
    brokers: dict[str, ActiveMQ]
    zookeeper: ZooKeeper
    postgres: Postgres
    db_url: str
    queues: list[str]
    # Each instance's network path to ZooKeeper, which a fault can darken.
    zookeeper_paths: dict[str, TcpProxy]
    session_timeout_s: float

    @property
    def exclusive(self) -> bool:
        """Whether two instances active at once breaks the one-writer guarantee."""
        return self.mode == "shared"

    @property
    def producer_hosts(self) -> list[str]:
        """Brokers in the producers' priority order: the first instance's broker first."""
        hosts: list[str] = []
        for instance in self.instances:
            host = self.brokers[short_name(instance)].host
            if host not in hosts:
                hosts.append(host)
        return hosts

    def services(self) -> list[Service]:
        """Every server the pair depends on, each once."""
        unique: dict[int, Service] = {}
        for service in (*self.brokers.values(), self.zookeeper, self.postgres):
            unique.setdefault(id(service), service)
        return list(unique.values())

    def is_settled(self, roles: dict[str, str]) -> bool:
        """Whether the sampled roles are those of a pair at rest."""
        if len(roles) != len(self.instances):
            return False
        if self.mode == "segregated":
            primary, backup = (short_name(i) for i in self.instances)
            return roles.get(primary) == "active" and roles.get(backup) == "standby"
        values = list(roles.values())
        return values.count("active") == 1 and values.count("standby") == len(values) - 1

    def is_drained(self, roles: dict[str, str], pending: dict[str, int | None]) -> bool:
        """Whether the journals hold nothing not yet stored, as the instances report it."""
        if self.mode == "segregated":
            # Every instance drains its own journal, whatever its role.
            return all(n == 0 for n in pending.values())
        # One journal; the active drains it (a standby's figure is not kept current).
        return any(roles.get(name) == "active" and n == 0 for name, n in pending.items())

    def close(self) -> None:
        """Stop both instances (SIGKILL if they hang) and the ZooKeeper paths."""
        for instance in self.instances:
            if instance.is_paused():
                instance.resume()
            instance.stop(timeout_s=15)
        for proxy in self.zookeeper_paths.values():
            proxy.stop()

    def __enter__(self) -> "Pair":
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
) -> Pair:
    """rs-a and rs-b on one broker and one journal directory."""
    return _build(
        workdir,
        "shared",
        [("rs-a", None, broker), ("rs-b", None, broker)],
        zookeeper=zookeeper,
        postgres=postgres,
        session_timeout_s=session_timeout_s,
    )


def build_segregated_pair(
    workdir: Path,
    *,
    primary_broker: ActiveMQ,
    backup_broker: ActiveMQ,
    zookeeper: ZooKeeper,
    postgres: Postgres,
    session_timeout_s: float = 2.0,
) -> Pair:
    """rs-p (primary) and rs-b (backup), each with its own broker and journal directory."""
    return _build(
        workdir,
        "segregated",
        [("rs-p", "primary", primary_broker), ("rs-b", "backup", backup_broker)],
        zookeeper=zookeeper,
        postgres=postgres,
        session_timeout_s=session_timeout_s,
    )


def _build(
    workdir: Path,
    mode: str,
    members: list[tuple[str, str | None, ActiveMQ]],
    *,
    zookeeper: ZooKeeper,
    postgres: Postgres,
    session_timeout_s: float,
) -> Pair:
    # Its own database, queue names and ZooKeeper path, so runs can share the servers.
    tag = uuid.uuid4().hex[:10]
    db_url = postgres.create_database(f"chaos_{tag}")
    queues = [f"c{tag}.gvp.reporting.{kind}" for kind in KINDS]
    cluster = f"/chaos/{tag}"
    instances: list[Instance] = []
    paths: dict[str, TcpProxy] = {}
    for name, role, broker in members:
        paths[name] = TcpProxy("127.0.0.1", zookeeper.port).start()
        ha: dict[str, Any] = {
            "mode": mode,
            "zookeeper": paths[name].host,
            "cluster": cluster,
            "session_timeout": session_timeout_s,
        }
        if role is not None:
            ha["role"] = role
        journal = workdir / ("shared-journal" if mode == "shared" else f"{name}-journal")
        config: dict[str, Any] = {
            "name": name,
            "ha": ha,
            "broker": {"hosts": [broker.host], "queues": queues, "heartbeat_ms": 1000},
            "database": {"url": db_url, "batch_records": 500},
            "journal": {"dir": str(journal)},
        }
        instances.append(Instance(workdir / name, config))
    for instance, other in ((instances[0], instances[1]), (instances[1], instances[0])):
        instance.config["ha"]["peers"] = [other.listen]
    return Pair(
        mode=mode,
        instances=instances,
        brokers={name: broker for name, _, broker in members},
        zookeeper=zookeeper,
        postgres=postgres,
        db_url=db_url,
        queues=queues,
        zookeeper_paths=paths,
        session_timeout_s=session_timeout_s,
    )
