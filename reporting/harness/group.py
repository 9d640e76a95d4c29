"""The members of one group-mode cluster: queues spread over N instances on one broker.

Built one member at a time, as a group grows in operation: each new member lists the ones built
before it as peers, all share the broker, the cluster path and the journal folder.
"""

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from reporting.harness.instance import Instance, instance_config, merge


class Group:
    """Group-mode instances (built, not started) under `workdir`, run by `instance_type`
    (processes, or `InstanceContainer`); `close` stops them."""

    def __init__(
        self,
        workdir: Path,
        *,
        broker_host: str,
        zookeeper_hosts: str,
        db_url: str,
        queues: Sequence[str],
        cluster: str,
        session_timeout_s: float = 2.0,
        settings: Mapping[str, Any] | None = None,
        instance_type: type[Instance] = Instance,
    ) -> None:
        self.workdir = workdir
        self.broker_host = broker_host
        self.zookeeper_hosts = zookeeper_hosts
        self.db_url = db_url
        self.queues = list(queues)
        self.cluster = cluster
        self.session_timeout_s = session_timeout_s
        self.settings = settings
        self.instance_type = instance_type
        self.members: list[Instance] = []

    def add(self, name: str, **overrides: dict[str, Any]) -> Instance:
        """One more member named `name`, `overrides` laid over its config section by section."""
        config = instance_config(
            name,
            ha={
                "mode": "group",
                "zookeeper": self.zookeeper_hosts,
                "cluster": self.cluster,
                "session_timeout": self.session_timeout_s,
                "peers": [m.listen for m in self.members],
            },
            hosts=[self.broker_host],
            queues=self.queues,
            db_url=self.db_url,
            journal_dir=self.workdir / "group-journal",
            settings=self.settings,
        )
        instance = self.instance_type(self.workdir / name, merge(config, overrides))
        self.members.append(instance)
        return instance

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.members)

    def close(self) -> None:
        """Stop every member (SIGKILL if it hangs) and remove its container if it runs in one."""
        for instance in self.members:
            if instance.is_paused():
                instance.resume()
            instance.stop(timeout_s=15)
            instance.remove()


def owners(members: Sequence[Instance]) -> dict[str, list[str]]:
    """queue -> the members that say they own it (an unreachable member says nothing)."""
    out: dict[str, list[str]] = {}
    for instance in members:
        status = instance.try_status(timeout_s=0.5) or {}
        for queue, q in (status.get("queues") or {}).items():
            out.setdefault(queue, [])
            if q["role"] == "active":
                out[queue].append(status["name"])
    return out


def spread(members: Sequence[Instance], queues: Sequence[str]) -> dict[str, str] | None:
    """queue -> its one owner, once every queue has exactly one and every member owns one."""
    seen = owners(members)
    if any(len(seen.get(queue, [])) != 1 for queue in queues):
        return None
    assignment = {queue: seen[queue][0] for queue in queues}
    names = {str(i.config["name"]) for i in members}
    return assignment if set(assignment.values()) == names else None
