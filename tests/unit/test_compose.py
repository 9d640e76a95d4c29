"""compose/: valid YAML, every referenced file exists, every server config passes validation, and
every stack is secure as shipped: authenticated hops, passwords only in secret files, the server
on a least-privilege database role, ports published on 127.0.0.1 only, no registry image. The
monitoring override (compose/monitoring.yml) is held to the same rules, except for Grafana's
image, which Debian does not package; it runs on the host's network, listening on 127.0.0.1."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from reporting.config import load_config

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
COMPOSE_FILES = sorted(COMPOSE.glob("*.yml"))
MONITORING = COMPOSE / "monitoring.yml"
STACKS = [path for path in COMPOSE_FILES if path != MONITORING]
PROJECT_IMAGES = {
    "reporting/activemq",
    "reporting/zookeeper",
    "reporting/postgres",
    "reporting/server",
    "reporting/prometheus",
}
# Images from a registry: each only in the file named, and only because Debian lacks it.
REGISTRY_IMAGES = {"docker.io/grafana/grafana-oss:10.4.2": "monitoring.yml"}
STACK_VARIABLE = re.compile(r"\$\{REPORTING_STACK[^}]*\}")
SERVER_CONFIG = "/etc/reporting/reporting.toml"


def services(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["services"]


def server_configs(path: Path) -> dict[str, Path]:
    """The instance services of a compose file and the config each mounts."""
    out = {}
    for name, service in services(path).items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if target == SERVER_CONFIG:
                out[name] = COMPOSE / source
    return out


def for_stack(text: str, stack: str) -> str:
    """`text` with the monitoring override's ${REPORTING_STACK...} as `stack` makes it."""
    return STACK_VARIABLE.sub(stack, text)


def test_there_is_a_compose_file_per_mode_and_per_scaled_out_system() -> None:
    assert {f.name for f in STACKS} == {
        "shared.yml",
        "segregated.yml",
        "ensemble.yml",
        "pg-standby.yml",
        "group.yml",
    }


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_references_only_existing_files(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    for name, service in document["services"].items():
        image = service["image"]
        assert image in PROJECT_IMAGES or REGISTRY_IMAGES.get(image) == path.name, (
            f"{name}: {image}"
        )
        assert "build" not in service, f"{name}: images come from scripts/containers"
        for volume in {
            for_stack(v, stack.stem) for v in service.get("volumes", []) for stack in STACKS
        }:
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (path.parent / source).exists(), f"{name}: {source}"
            else:
                assert source in document.get("volumes", {}), f"{name}: undeclared volume {source}"
        for dependency in service.get("depends_on", {}):
            assert dependency in document["services"], f"{name}: depends on unknown {dependency}"
        for secret in service.get("secrets", []):
            assert secret in document["secrets"], f"{name}: undeclared secret {secret}"


@pytest.mark.parametrize("path", STACKS, ids=lambda p: p.name)
def test_a_pair_is_two_instances_and_the_group_three(path: Path) -> None:
    assert len(server_configs(path)) == (3 if path.name == "group.yml" else 2)


@pytest.mark.parametrize("path", sorted((COMPOSE / "config").glob("*.toml")), ids=lambda p: p.name)
def test_server_configs_are_valid(path: Path, tmp_path: Path) -> None:
    # The secrets the config names, as compose mounts them (files only their owner may read).
    text = path.read_text()
    for name in ("broker-server", "postgres-owner", "postgres-server", "zookeeper"):
        (tmp_path / name).write_text("secret")
        (tmp_path / name).chmod(0o600)
    (tmp_path / path.name).write_text(text.replace("/run/secrets/", f"{tmp_path}/"))
    config = load_config(tmp_path / path.name)
    assert config.database.url.startswith("postgresql+psycopg://")


def test_every_config_is_mounted_by_a_compose_file() -> None:
    mounted = {
        (COMPOSE / volume.split(":")[0]).resolve()
        for path in COMPOSE_FILES
        for service in services(path).values()
        for volume in service.get("volumes", [])
        if volume.startswith("./config/")
    }
    assert mounted == {p.resolve() for p in (COMPOSE / "config").glob("*.toml")}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_ports_are_published_on_loopback_only(path: Path) -> None:
    for name, service in services(path).items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_passwords_are_compose_secrets_from_files(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    for name, secret in document["secrets"].items():
        assert set(secret) == {"file"}, name
        assert secret["file"] == "${REPORTING_SECRETS:-./secrets}/" + name
    text = path.read_text().lower()
    for insecure in ("trust", "password:", "_password=", "allow_anonymous"):
        assert insecure not in text, insecure


@pytest.mark.parametrize("path", STACKS, ids=lambda p: p.name)
def test_every_hop_authenticates(path: Path) -> None:
    for name, service in services(path).items():
        env = service.get("environment", {})
        if service["image"] == "reporting/activemq":
            users = dict(u.split(":")[:2] for u in env["ACTIVEMQ_USERS"].split())
            assert sorted(users.values()) == ["producer", "server"], f"{name}: {users}"
        if service["image"] == "reporting/postgres":
            assert env["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/"), name
    for name, config_path in server_configs(path).items():
        config = tomllib.loads(config_path.read_text())
        assert config["broker"]["user"] and config["broker"]["password_file"], name
        assert config["ha"]["user"] and config["ha"]["password_file"], name
        assert config["database"]["password_file"], name
        assert "password" not in config["database"]["url"], name
        # Not the owner: the role db-setup's `db grant` gave only what the server needs.
        assert config["database"]["url"].startswith("postgresql+psycopg://reporting_server@"), name


@pytest.mark.parametrize("path", STACKS, ids=lambda p: p.name)
def test_the_schema_is_made_by_its_owner_and_the_server_role_granted(path: Path) -> None:
    setup = services(path)["db-setup"]
    command = " ".join(setup["command"])
    assert (
        "db upgrade" in command and "db grant" in command and "--role reporting_server" in command
    )
    for name in server_configs(path):
        condition = services(path)[name]["depends_on"]["db-setup"]["condition"]
        assert condition == "service_completed_successfully", name


def test_the_monitoring_override_listens_on_loopback_of_the_hosts_network() -> None:
    """Nothing published, nothing on a Docker network: host networking, bound to 127.0.0.1."""
    monitoring = services(MONITORING)
    stack_services = {name for path in STACKS for name in services(path)}
    assert not set(monitoring) & stack_services, "an override service would replace a stack's"
    for name, service in monitoring.items():
        assert service["network_mode"] == "host", name
        assert "ports" not in service, name
    assert "--web.listen-address=127.0.0.1:9090" in monitoring["prometheus"]["command"]
    grafana = monitoring["grafana"]["environment"]
    assert grafana["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana-admin"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_the_tests_override_moves_every_port_of_the_stack(path: Path, tmp_path: Path) -> None:
    """The compose tests run a stack on free ports: no port of the file may be left behind in
    the environment, the health checks or the configs the override mounts."""
    from tests.containers.compose_stack import PORT_IN_TEXT, host_override, stack_ports

    document = yaml.safe_load(path.read_text())
    ports = {port: 40000 + i for i, port in enumerate(sorted(stack_ports(document)))}
    override = host_override(document, tmp_path, ports)["services"]
    texts = [f.read_text() for f in tmp_path.iterdir()]
    for name, service in document["services"].items():
        # What the service runs with: its own settings, the override's laid over them.
        environment = {**service.get("environment", {}), **override[name]["environment"]}
        health = override[name].get("healthcheck") or service.get("healthcheck") or {}
        texts += [str(v) for v in environment.values()] + [str(w) for w in health.get("test", [])]
    left = {int(n) for text in texts for n in PORT_IN_TEXT.findall(text)} - set(ports.values())
    assert not left, f"{path.name}: ports not renumbered: {sorted(left)}"
    mounted = {f.name for f in tmp_path.iterdir()}
    assert set(server_configs(path).values()) <= {COMPOSE / "config" / n for n in mounted}
