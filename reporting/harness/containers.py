"""The container backend: the same servers and interface as the local one, run by Docker.

Chosen when a Docker engine answers or REPORTING_TEST_BACKEND=containers. Host ports are picked
free at construction and bound explicitly, so a restarted container keeps them; stop() and kill()
leave the container (and its data) in place for restart(), remove() deletes it.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reporting.errors import HarnessError
from reporting.harness import probes, processes
from reporting.harness.activemq import broker_xml
from reporting.harness.ports import free_port
from reporting.harness.postgres import PostgresAccess

log = logging.getLogger(__name__)

ACTIVEMQ_IMAGE = "apache/activemq-classic:5.18.6"
ZOOKEEPER_IMAGE = "zookeeper:3.8"
POSTGRES_IMAGE = "postgres:15"
ACTIVEMQ_CONF = "/opt/apache-activemq/conf/activemq.xml"


@dataclass(frozen=True)
class ContainerSpec:
    """What to run: image, the one protocol port inside the container, environment, command,
    and files to place into the container before it starts (path -> content)."""

    image: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None
    files: dict[str, str] = field(default_factory=dict)


def postgres_spec() -> ContainerSpec:
    return ContainerSpec(
        image=POSTGRES_IMAGE,
        port=5432,
        env={"POSTGRES_HOST_AUTH_METHOD": "trust"},
        command=[
            "postgres",
            "-c", "fsync=on",
            "-c", "synchronous_commit=on",
            "-c", "full_page_writes=on",
            "-c", "shared_buffers=16MB",
        ],
    )  # fmt: skip


def activemq_spec() -> ContainerSpec:
    return ContainerSpec(
        image=ACTIVEMQ_IMAGE,
        port=61613,
        env={"ACTIVEMQ_OPTS_MEMORY": "-Xms64m -Xmx256m"},
        files={ACTIVEMQ_CONF: broker_xml("0.0.0.0", 61613)},
    )


def zookeeper_spec() -> ContainerSpec:
    return ContainerSpec(
        image=ZOOKEEPER_IMAGE,
        port=2181,
        env={
            "ZOO_TICK_TIME": "200",
            "ZOO_4LW_COMMANDS_WHITELIST": "srvr,ruok,mntr,stat,cons",
            "ZOO_ADMINSERVER_ENABLED": "false",
            "ZOO_CFG_EXTRA": "minSessionTimeout=400 maxSessionTimeout=60000",
        },
    )


def docker_answers() -> bool:
    """True when a Docker engine answers a ping."""
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no permission: all mean "no engine here"
        return False


def select_backend(requested: str | None) -> str:
    """ "local" or "containers": the request if given, else containers only when Docker answers."""
    if requested:
        if requested not in ("local", "containers"):
            raise HarnessError(f"backend must be 'local' or 'containers', not {requested!r}")
        return requested
    return "containers" if docker_answers() else "local"


class ContainerService:
    """One server in a container, with the local Service's lifecycle and fault methods."""

    name = "service"

    def __init__(self, workdir: Path | str, spec: ContainerSpec, *, port: int | None) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.spec = spec
        self.port = port or free_port()
        self._container: Any = None  # testcontainers DockerContainer, created on first start

    @property
    def address(self) -> str:
        return self._container.get_container_host_ip() if self._container else "127.0.0.1"

    @property
    def pid(self) -> int | None:
        if not self.is_running():
            return None
        return int(self._wrapped().attrs["State"]["Pid"]) or None

    def ports(self) -> dict[str, int]:
        return {"port": self.port}

    def start(self, timeout_s: float = 90) -> None:
        if self._container is None:
            self._container = self._build()
            self._container.start()
            processes.register(id(self), self.remove)
        else:
            self._wrapped().start()
        deadline = time.monotonic() + timeout_s
        while not self._probe():
            if time.monotonic() >= deadline:
                raise HarnessError(
                    f"{self.name}: container not ready after {timeout_s:.0f} s:\n"
                    f"{self.log_tail(40)}"
                )
            time.sleep(0.1)

    def stop(self, timeout_s: float = 30) -> None:
        if self._container is not None and self.is_running():
            self._save_log()
            self._wrapped().stop(timeout=int(timeout_s))

    def kill(self) -> None:
        if self._container is not None and self.is_running():
            self._wrapped().kill(signal="SIGKILL")
            self._wrapped().wait(timeout=30)

    def pause(self) -> None:
        self._wrapped().pause()

    def resume(self) -> None:
        self._wrapped().unpause()

    def restart(self, timeout_s: float = 90) -> None:
        self.stop()
        self.start(timeout_s)

    def is_running(self) -> bool:
        if self._container is None:
            return False
        wrapped = self._wrapped()
        wrapped.reload()
        return wrapped.status in ("running", "paused")

    def is_paused(self) -> bool:
        if self._container is None:
            return False
        wrapped = self._wrapped()
        wrapped.reload()
        return wrapped.status == "paused"

    def log_tail(self, lines: int = 200) -> str:
        if self._container is None:
            return ""
        return self._wrapped().logs(tail=lines).decode(errors="replace")

    def remove(self) -> None:
        """Stop and delete the container and its data."""
        if self._container is not None:
            self._save_log()
            self._container.stop()  # testcontainers' stop removes the container
            self._container = None
        processes.unregister(id(self))

    def detach(self) -> None:
        """Leave the container running when this interpreter exits."""
        processes.unregister(id(self))

    def state(self) -> dict[str, Any]:
        container_id = self._container.get_wrapped_container().id if self._container else None
        return {"workdir": str(self.workdir), "container": container_id, "ports": self.ports()}

    def _save_log(self) -> None:
        self.log_path.write_text(self.log_tail(2000))

    def _wrapped(self) -> Any:
        if self._container is None:
            raise HarnessError(f"{self.name}: container not started")
        return self._container.get_wrapped_container()

    def _build(self, factory: Any = None) -> Any:
        """The testcontainers DockerContainer (or what factory makes) for this spec."""
        if factory is None:
            from testcontainers.core.container import DockerContainer as factory
        container = factory(self.spec.image).with_bind_ports(self.spec.port, self.port)
        for key, value in self.spec.env.items():
            container = container.with_env(key, value)
        if self.spec.command:
            container = container.with_command(self.spec.command)
        for path, content in self.spec.files.items():
            container = container.with_copy_into_container(content.encode(), path)
        return container

    def _probe(self) -> bool:
        raise NotImplementedError


class PostgresContainer(ContainerService, PostgresAccess):
    name = "postgres"

    def __init__(self, workdir: Path | str, *, port: int | None = None) -> None:
        super().__init__(workdir, postgres_spec(), port=port)

    def _probe(self) -> bool:
        return probes.postgres_ready(self.port, self.address)


class ActiveMQContainer(ContainerService):
    name = "activemq"

    def __init__(self, workdir: Path | str, *, stomp_port: int | None = None) -> None:
        super().__init__(workdir, activemq_spec(), port=stomp_port)

    @property
    def stomp_port(self) -> int:
        return self.port

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    def ports(self) -> dict[str, int]:
        return {"stomp_port": self.port}

    def queue_depth(self, queue: str) -> int:
        return probes.activemq_queue_depth(self.port, queue, self.address)

    def _probe(self) -> bool:
        return probes.stomp_ready(self.port, self.address)


class ZooKeeperContainer(ContainerService):
    name = "zookeeper"

    def __init__(self, workdir: Path | str, *, port: int | None = None) -> None:
        super().__init__(workdir, zookeeper_spec(), port=port)

    @property
    def hosts(self) -> str:
        return f"{self.address}:{self.port}"

    def command(self, word: str) -> str:
        return probes.zookeeper_command(self.port, word, self.address)

    def _probe(self) -> bool:
        return probes.zookeeper_ready(self.port, self.address)
