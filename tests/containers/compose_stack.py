"""A compose/ stack brought up by docker-compose for a test, with the host-network override.

The override is all the tests add to a compose file (README, Containers): every service on the
host's network (no Docker network is made), every service name resolving to 127.0.0.1
(`extra_hosts`), `LISTEN_HOST=127.0.0.1` for the images that take it, each instance's config
mounted with its `[http] listen` on 127.0.0.1 instead of 0.0.0.0, and every port of the stack
(61613, 5432, 8081...) renumbered to a free one the harness picked, in the environment, the
health checks and the mounted configs, so that stacks and other servers on the host never
collide. Published `ports` are dropped from the merged file (host networking has no use for
them, and docker-compose v1 refuses the two together). The override, the configs and the merged
file are written into the stack's folder, so a failed run can be replayed with the same files.
Passwords come from `scripts/containers secrets`.
"""

import os
import re
import subprocess
import tomllib
import uuid
from pathlib import Path
from typing import Any

import yaml

from reporting.harness.ports import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose"
# Where the compose files mount an instance's config; the configs mounted from there.
SERVER_CONFIG = "/etc/reporting/reporting.toml"
CONFIG_SOURCE = "./config/"
# A port in a value: not part of a longer number or a dotted version.
PORT_IN_TEXT = re.compile(r"(?<![\d.])(\d{4,5})(?![\d.])")
# Projects brought up in this interpreter: the session checks that none is left.
PROJECTS: list[str] = []


def stack_ports(document: dict[str, Any]) -> set[int]:
    """The ports a compose file's services listen on: its `*_PORT` settings, the ports in its
    other settings (ZooKeeper's peers, a standby's primary) and its published ports."""
    found: set[int] = set()
    for service in document["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if key.endswith("_PORT"):
                found.add(int(value))
            else:
                found.update(int(port) for port in re.findall(r":(\d{4,5})\b", str(value)))
        for published in service.get("ports", []):
            found.add(int(str(published).rsplit(":", 1)[-1]))
    return found


def renumber(text: str, ports: dict[int, int]) -> str:
    """`text` with each port of `ports` replaced by the one it maps to."""
    return PORT_IN_TEXT.sub(lambda m: str(ports.get(int(m[1]), m[1])), text)


def host_override(
    document: dict[str, Any], config_dir: Path, ports: dict[int, int]
) -> dict[str, Any]:
    """The override for one compose file (its parsed YAML) on the host ports `ports` maps its
    own to; writes the configs it mounts."""
    names = list(document["services"])
    services: dict[str, Any] = {}
    for name, service in document["services"].items():
        environment = {
            key: renumber(str(value), ports)
            for key, value in (service.get("environment") or {}).items()
            if renumber(str(value), ports) != str(value)
        }
        override: dict[str, Any] = {
            "network_mode": "host",
            "extra_hosts": [f"{other}:127.0.0.1" for other in names],
            "environment": {"LISTEN_HOST": "127.0.0.1", **environment},
        }
        if "healthcheck" in service:
            test = [renumber(str(word), ports) for word in service["healthcheck"]["test"]]
            override["healthcheck"] = {"test": test}
        volumes = []
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if not source.startswith(CONFIG_SOURCE):
                continue
            text = (COMPOSE / source).read_text()
            if target == SERVER_CONFIG:
                changed = text.replace('listen = "0.0.0.0:', 'listen = "127.0.0.1:')
                assert changed != text, f"{source}: no [http] listen on 0.0.0.0"
                text = changed
            (config_dir / Path(source).name).write_text(renumber(text, ports))
            volumes.append(f"{config_dir / Path(source).name}:{target}:ro")
        if volumes:
            override["volumes"] = volumes
        services[name] = override
    return {"services": services}


class ComposeStack:
    """`docker-compose -p PROJECT -f compose/NAME.yml -f override.yml ...` in `workdir`."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.file = COMPOSE / f"{name}.yml"
        self.document = yaml.safe_load(self.file.read_text())
        self.workdir = workdir
        self.project = f"rstest-{name}-{uuid.uuid4().hex[:6]}"
        self.secrets = workdir / "secrets"
        self.override = workdir / "host-network.yml"
        self.merged = workdir / "stack.yml"
        # Each port of the stack, as the compose file says it -> the free port the tests use.
        self.ports = {port: free_port() for port in sorted(stack_ports(self.document))}
        config_dir = workdir / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        override = host_override(self.document, config_dir, self.ports)
        self.override.write_text(yaml.safe_dump(override))
        subprocess.run(
            [str(REPO / "scripts" / "containers"), "secrets", str(self.secrets)],
            check=True,
            capture_output=True,
        )
        # docker-compose v1 refuses published ports with host networking, and an override can
        # only add to a list, never remove from it: the stack runs as the merged file
        # (`docker-compose config`) with `ports` removed, the one thing the override cannot say.
        merged = yaml.safe_load(
            self._run(["-f", str(self.file), "-f", str(self.override), "config"])
        )
        for service in merged["services"].values():
            service.pop("ports", None)
        self.merged.write_text(yaml.safe_dump(merged))

    def host(self, port: int) -> str:
        """127.0.0.1:PORT of what the compose file has on `port`."""
        return f"127.0.0.1:{self.ports[port]}"

    def secret(self, name: str) -> str:
        return (self.secrets / name).read_text()

    def compose(self, *args: str, timeout_s: float = 300) -> str:
        """docker-compose ARGS on the stack (its merged file)."""
        return self._run(["-f", str(self.merged), *args], timeout_s)

    def _run(self, args: list[str], timeout_s: float = 300) -> str:
        command = ["docker-compose", "-p", self.project, *args]
        env = {**os.environ, "REPORTING_SECRETS": str(self.secrets)}
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, cwd=COMPOSE
        )
        if done.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def up(self) -> None:
        PROJECTS.append(self.project)
        self.compose("up", "-d", "--no-build", timeout_s=600)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "10")

    def kill(self, service: str) -> None:
        """SIGKILL the service's container (`docker kill`)."""
        self.compose("kill", "-s", "SIGKILL", service)

    def start(self, service: str) -> None:
        """`docker start` of the service's stopped container."""
        self.compose("start", service)

    def logs(self) -> str:
        try:
            return self.compose("logs", "--no-color", "--tail", "60", timeout_s=60)
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            return f"(no logs: {exc})"

    def containers(self) -> list[str]:
        return self.compose("ps", "-q", "-a").split()

    def server_configs(self) -> dict[str, dict[str, Any]]:
        """Each instance service's config (as the override mounts it), by service name."""
        configs = {}
        for name, service in self.document["services"].items():
            for volume in service.get("volumes", []):
                source, target = volume.split(":")[:2]
                if target == SERVER_CONFIG:
                    path = self.workdir / "config" / Path(source).name
                    configs[name] = tomllib.loads(path.read_text())
        return configs
