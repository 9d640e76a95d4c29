"""A primary/backup pair of instances and the servers and network paths it runs on.

Tests, chaos runs and benchmarks build their pairs here. What differs between the modes is said
once, in `Pair`: which servers a fault may hit, how producers reach the pair, what "settled" and
"drained" mean, and whether two actives at once break a guarantee.

- Shared storage: one broker and one journal directory; any one instance active, the other
  standby, and never two actives (one store, one writer).
- Segregated stores: a broker and a journal per instance; settled is the primary active and the
  backup standby. Two actives are expected while the backup drains its own broker after the
  primary came back (each store still has one consumer), so that is no breach there.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from reporting.errors import HarnessError
from reporting.harness.activemq import ActiveMQ
from reporting.harness.instance import Instance, instance_config, merge
from reporting.harness.proxy import TcpProxy
from reporting.harness.service import DatabaseServer, Service
from reporting.harness.waiting import wait_until
from reporting.harness.zookeeper import ZooKeeper

# The instances' names: (first, second); segregated is (primary, backup).
NAMES = {"shared": ("rs-a", "rs-b"), "segregated": ("rs-p", "rs-b")}


def short_name(instance: Instance) -> str:
    """The instance's configured name (rs-a), as /status and the logs say it."""
    return str(instance.config["name"])


def roles(instances: Sequence[Instance]) -> dict[str, str]:
    """Each instance's role as its /status says, or "unreachable", by `Instance.name`."""
    out = {}
    for instance in instances:
        status = instance.try_status(timeout_s=0.5)
        out[instance.name] = status["role"] if status else "unreachable"
    return out


def active_of(instances: Sequence[Instance]) -> Instance | None:
    """The one instance that says it is active, or None; two actives fail an assertion."""
    actives = [i for i in instances if (i.try_status(timeout_s=0.5) or {}).get("role") == "active"]
    assert len(actives) <= 1, f"two active instances: {roles(instances)}"
    return actives[0] if actives else None


@dataclass
class Pair:
    """Two instances (built, not started) and what they run on; `close` stops the instances.

    Iterating a pair gives its instances, first (segregated: the primary) first."""

    mode: str
    instances: list[Instance]
    # Each instance's own broker (shared mode: the one broker under both names).
    brokers: dict[str, ActiveMQ]
    zookeeper: ZooKeeper
    # The server of `db_url`: PostgreSQL or MariaDB.
    database: DatabaseServer
    db_url: str
    queues: list[str]
    # Each instance's network path to ZooKeeper, which a fault can darken (when built with them).
    zookeeper_paths: dict[str, TcpProxy]
    session_timeout_s: float

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances)

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> Instance:
        return self.instances[index]

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
        for service in (*self.brokers.values(), self.zookeeper, self.database):
            unique.setdefault(id(service), service)
        return list(unique.values())

    def start(self, timeout_s: float = 30) -> tuple[Instance, Instance]:
        """Start both and wait for the pair at rest; returns (active, standby).

        Segregated: the primary first, so that it is the one active."""
        if self.mode == "segregated":
            primary, backup = self.instances
            primary.start()
            wait_until(lambda: self.roles()[primary.name] == "active", timeout_s, "the primary")
            backup.start()
            wait_until(lambda: self.roles()[backup.name] == "standby", timeout_s, "the backup")
            return primary, backup
        for instance in self.instances:
            instance.start()
        active = wait_until(self.active, timeout_s, "an active instance")
        standby = next(i for i in self.instances if i is not active)
        wait_until(lambda: self.roles()[standby.name] == "standby", timeout_s, "a standby")
        return active, standby

    def roles(self) -> dict[str, str]:
        return roles(self.instances)

    def active(self) -> Instance | None:
        return active_of(self.instances)

    def lose_host(self, instance: Instance) -> None:
        """kill -9 the instance and, segregated, its own broker: the whole host is gone."""
        instance.kill()
        if self.mode == "segregated":
            self.brokers[short_name(instance)].kill()

    def restore_host(self, instance: Instance) -> None:
        """Bring back what `lose_host` took: the host's broker, then the instance."""
        broker = self.brokers[short_name(instance)]
        if not broker.is_running():
            broker.restart()
        instance.start()

    def is_settled(self, roles: Mapping[str, str]) -> bool:
        """Whether the sampled roles (by short name) are those of a pair at rest."""
        if len(roles) != len(self.instances):
            return False
        if self.mode == "segregated":
            primary, backup = (short_name(i) for i in self.instances)
            return roles.get(primary) == "active" and roles.get(backup) == "standby"
        values = list(roles.values())
        return values.count("active") == 1 and values.count("standby") == len(values) - 1

    def is_drained(self, roles: Mapping[str, str], pending: Mapping[str, int | None]) -> bool:
        """Whether the journals hold nothing not yet stored, as the instances report it (both
        by short name)."""
        if self.mode == "segregated":
            # Every instance drains its own journal, whatever its role.
            return all(n == 0 for n in pending.values())
        # One journal; the active drains it (a standby's figure is not kept current).
        return any(roles.get(name) == "active" and n == 0 for name, n in pending.items())

    def left_in_brokers(self) -> dict[str, str]:
        """`host queue` -> what is still in it (or why the broker cannot tell), for every queue
        of every broker of the pair; empty when nothing was left unconsumed."""
        found = {}
        for broker in {id(b): b for b in self.brokers.values()}.values():
            for queue in self.queues:
                try:
                    depth = broker.queue_depth(queue)
                except Exception as exc:  # the broker cannot tell now; the caller asks again
                    found[f"{broker.host} {queue}"] = f"unknown ({brief(exc)})"
                    continue
                if depth:
                    found[f"{broker.host} {queue}"] = f"{depth} messages"
        return found

    def left_in_journals(self) -> dict[str, int | None]:
        """Short name -> records its journal holds not yet stored, while the pair is not drained
        (a standby's figure in shared mode is not kept current, so it counts only when active)."""
        statuses = {short_name(i): i.try_status(timeout_s=0.5) or {} for i in self.instances}
        roles = {name: status.get("role", "unreachable") for name, status in statuses.items()}
        pending = {name: (s.get("journal") or {}).get("pending") for name, s in statuses.items()}
        return {} if self.is_drained(roles, pending) else pending

    def close(self) -> None:
        """Stop both instances (SIGKILL if they hang), remove their containers if they run in
        some, and stop the ZooKeeper paths."""
        for instance in self.instances:
            if instance.is_paused():
                instance.resume()
            instance.stop(timeout_s=15)
            instance.remove()
        for proxy in self.zookeeper_paths.values():
            proxy.stop()

    def __enter__(self) -> "Pair":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def build_pair(
    workdir: Path,
    *,
    mode: str,
    brokers: Sequence[ActiveMQ],
    zookeeper: ZooKeeper,
    database: DatabaseServer,
    db_url: str,
    queues: Sequence[str],
    cluster: str,
    names: tuple[str, str] | None = None,
    session_timeout_s: float = 2.0,
    zookeeper_paths: bool = False,
    settings: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    instance_type: type[Instance] = Instance,
) -> Pair:
    """Two instances that know each other (built, not started) under `workdir`.

    Shared: one broker, one journal directory. Segregated: the first instance is the primary,
    each has its own broker (`brokers` in the same order; a benchmark of the drain may give one
    for both) and journal. With `zookeeper_paths`
    each instance reaches ZooKeeper through a TcpProxy of its own, for faults to darken.
    `settings` are laid over both configs, then `overrides[name]` over that instance's.
    `instance_type` runs them: local processes, or `InstanceContainer` for containers."""
    if mode not in NAMES:
        raise HarnessError(f"pair: mode must be one of {', '.join(NAMES)}, got {mode!r}")
    wanted = (1,) if mode == "shared" else (1, 2)
    if len(brokers) not in wanted:
        raise HarnessError(f"pair: a {mode} pair runs on {wanted} broker(s), got {len(brokers)}")
    names = names or NAMES[mode]
    own_broker = dict(zip(names, brokers if len(brokers) == 2 else brokers * 2, strict=True))
    paths: dict[str, TcpProxy] = {}
    instances = []
    for index, name in enumerate(names):
        zookeeper_hosts = zookeeper.hosts
        if zookeeper_paths:
            paths[name] = TcpProxy("127.0.0.1", zookeeper.port).start()
            zookeeper_hosts = paths[name].host
        ha: dict[str, Any] = {
            "mode": mode,
            "zookeeper": zookeeper_hosts,
            "cluster": cluster,
            "session_timeout": session_timeout_s,
        }
        if mode == "segregated":
            ha["role"] = ("primary", "backup")[index]
        journal = workdir / ("shared-journal" if mode == "shared" else f"{name}-journal")
        config = instance_config(
            name,
            ha=ha,
            hosts=[own_broker[name].host],
            queues=queues,
            db_url=db_url,
            journal_dir=journal,
            settings=settings,
        )
        config = merge(config, (overrides or {}).get(name, {}))
        instances.append(instance_type(workdir / name, config))
    for instance, other in ((instances[0], instances[1]), (instances[1], instances[0])):
        instance.config["ha"]["peers"] = [other.listen]
    return Pair(
        mode=mode,
        instances=instances,
        brokers=own_broker,
        zookeeper=zookeeper,
        database=database,
        db_url=db_url,
        queues=list(queues),
        zookeeper_paths=paths,
        session_timeout_s=session_timeout_s,
    )


def brief(exc: BaseException) -> str:
    """The first line of an error: harness errors carry whole log tails."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
