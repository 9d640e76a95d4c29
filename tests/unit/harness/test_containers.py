"""Container specs of the testcontainers backend, checked without a Docker engine."""

import pytest

from reporting.errors import HarnessError
from reporting.harness import containers


def test_postgres_spec() -> None:
    spec = containers.postgres_spec()
    assert spec.image == "postgres:15"
    assert spec.port == 5432
    assert spec.env["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert spec.command is not None and "fsync=on" in spec.command


def test_activemq_spec_runs_the_harness_broker_config_on_all_interfaces() -> None:
    spec = containers.activemq_spec()
    assert spec.image.startswith("apache/activemq-classic:5.18")
    assert spec.port == 61613
    xml = spec.files[containers.ACTIVEMQ_CONF]
    assert 'uri="stomp://0.0.0.0:61613?' in xml
    assert "<statisticsBrokerPlugin/>" in xml
    assert "${harness." not in xml
    assert "-Xmx256m" in spec.env["ACTIVEMQ_OPTS_MEMORY"]


def test_zookeeper_spec_allows_short_sessions_and_4lw() -> None:
    spec = containers.zookeeper_spec()
    assert spec.image == "zookeeper:3.8"
    assert spec.port == 2181
    assert spec.env["ZOO_TICK_TIME"] == "200"
    assert "ruok" in spec.env["ZOO_4LW_COMMANDS_WHITELIST"]
    assert spec.env["ZOO_ADMINSERVER_ENABLED"] == "false"


class _RecordingContainer:
    """Stands in for testcontainers' DockerContainer, which needs an engine to exist."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.ports: dict[int, int] = {}
        self.env: dict[str, str] = {}
        self.command: list[str] | None = None
        self.files: dict[str, bytes] = {}

    def with_bind_ports(self, container: int, host: int) -> "_RecordingContainer":
        self.ports[container] = host
        return self

    def with_env(self, key: str, value: str) -> "_RecordingContainer":
        self.env[key] = value
        return self

    def with_command(self, command: list[str]) -> "_RecordingContainer":
        self.command = command
        return self

    def with_copy_into_container(self, content: bytes, path: str) -> "_RecordingContainer":
        self.files[path] = content
        return self


def test_containers_bind_the_host_port_chosen_at_construction(tmp_path) -> None:
    zookeeper = containers.ZooKeeperContainer(tmp_path / "zk", port=45123)
    built = zookeeper._build(_RecordingContainer)
    assert built.image == "zookeeper:3.8"
    assert built.ports == {2181: 45123}
    assert built.env["ZOO_TICK_TIME"] == "200"
    assert zookeeper.hosts == "127.0.0.1:45123"
    assert not zookeeper.is_running()

    broker = containers.ActiveMQContainer(tmp_path / "amq", stomp_port=45124)
    built = broker._build(_RecordingContainer)
    assert built.ports == {61613: 45124}
    assert b"statisticsBrokerPlugin" in built.files[containers.ACTIVEMQ_CONF]
    assert broker.host == "127.0.0.1:45124"

    postgres = containers.PostgresContainer(tmp_path / "pg", port=45125)
    built = postgres._build(_RecordingContainer)
    assert built.ports == {5432: 45125}
    assert built.command == containers.postgres_spec().command
    assert postgres.url == "postgresql+psycopg://postgres@127.0.0.1:45125/postgres"


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert containers.select_backend("local") == "local"
    assert containers.select_backend("containers") == "containers"
    with pytest.raises(HarnessError):
        containers.select_backend("podman")
    monkeypatch.setattr(containers, "docker_answers", lambda: False)
    assert containers.select_backend(None) == "local"
    monkeypatch.setattr(containers, "docker_answers", lambda: True)
    assert containers.select_backend(None) == "containers"
