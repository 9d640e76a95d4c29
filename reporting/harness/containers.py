"""The container backend: the harness's own servers, each run in a container instead of a process.

The images are the project's (`scripts/containers` builds them from Debian packages, no image
registry). A container runs the command line the local Service would run, with host networking
and the workdir mounted at its own path, so ports (free 127.0.0.1 ports picked by the harness),
configuration, data and readiness probes are the local ones; no Docker network is created.
Preparation (configuration files, PostgreSQL's initdb) still runs on the host, from the same
packages. Faults are the engine's: kill is `docker kill` (SIGKILL), pause `docker pause`, a
restart `docker start` of the same container. testcontainers' reaper image cannot be pulled
here, so it is disabled; every container is removed by remove() (at interpreter exit at the
latest) and carries the label LABEL, which the test session checks at its end.
"""

import logging
import os
import pwd
import time
import uuid
from pathlib import Path
from typing import Any

from reporting.errors import HarnessError
from reporting.harness import processes
from reporting.harness.activemq import ActiveMQ
from reporting.harness.instance import Instance
from reporting.harness.postgres import Postgres
from reporting.harness.service import PROBE_INTERVAL_S, Service
from reporting.harness.zookeeper import ZooKeeper

log = logging.getLogger(__name__)

ACTIVEMQ_IMAGE = "reporting/activemq"
ZOOKEEPER_IMAGE = "reporting/zookeeper"
POSTGRES_IMAGE = "reporting/postgres"
SERVER_IMAGE = "reporting/server"
# Every harness container carries it; the value names the process that made it.
LABEL = "org.reporting.harness"
SETUP_HINT = "run: scripts/containers up (then export the DOCKER_HOST it prints)"

# The resource reaper (ryuk) is an image from a registry; containers are removed by the harness.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


def docker_client(timeout_s: float = 10) -> Any:
    """A docker SDK client for DOCKER_HOST (or the system socket); HarnessError if none answers."""
    try:
        import docker
    except ImportError:
        raise HarnessError("the docker SDK is not installed (pip install -e '.[test]')") from None
    try:
        client = docker.from_env(timeout=int(timeout_s))
        client.ping()
    except Exception as exc:  # the SDK raises several types for "no engine"
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise HarnessError(f"no Docker engine answers at {host}: {exc}; {SETUP_HINT}") from None
    return client


def docker_answers() -> bool:
    """True when a Docker engine answers a ping."""
    try:
        docker_client(timeout_s=2).close()
    except HarnessError:
        return False
    return True


def select_backend(requested: str | None) -> str:
    """ "local" or "containers": the request if given, else containers only when Docker answers."""
    if requested:
        if requested not in ("local", "containers"):
            raise HarnessError(f"backend must be 'local' or 'containers', not {requested!r}")
        return requested
    return "containers" if docker_answers() else "local"


def missing_images(images: tuple[str, ...] | None = None) -> list[str]:
    """The project images the engine does not have."""
    wanted = images or (ACTIVEMQ_IMAGE, ZOOKEEPER_IMAGE, POSTGRES_IMAGE, SERVER_IMAGE)
    client = docker_client()
    try:
        present = {tag.split(":")[0] for image in client.images.list() for tag in image.tags}
    finally:
        client.close()
    return [image for image in wanted if image not in present]


def remove_leftovers(owner: str, projects: list[str]) -> list[str]:
    """Removes the harness containers of `owner` and the containers of the compose `projects`
    that still exist; returns their names."""
    client = docker_client()
    try:
        found = client.containers.list(all=True, filters={"label": f"{LABEL}={owner}"})
        for project in projects:
            label = f"com.docker.compose.project={project}"
            found += client.containers.list(all=True, filters={"label": label})
        for container in found:
            container.remove(force=True)
        return [container.name for container in found]
    finally:
        client.close()


# One value per interpreter: the session's check finds its own containers, not another's.
OWNER = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ContainerService(Service):
    """Runs a Service's command in a container; put it first among the bases:
    `class ActiveMQContainer(ContainerService, ActiveMQ)`."""

    image: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._container: Any = None  # testcontainers DockerContainer, made on the first start
        self._saved_log = ""

    # -- what the container mounts and runs as -----------------------------------------------

    def mounts(self) -> list[Path]:
        """Host paths mounted at the same path (the workdir, by default)."""
        return [self.workdir]

    def container_command(self) -> list[str]:
        return self._command()

    def _run_options(self) -> dict[str, Any]:
        """docker run keywords: the user and environment the local process would have."""
        options = self._spawn_options()
        user = options.get("user")
        if user is None:
            uid, gid = os.getuid(), os.getgid()
        else:
            entry = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
            uid, gid = entry.pw_uid, entry.pw_gid
        volumes = {str(p): {"bind": str(p), "mode": "rw"} for p in self.mounts()}
        # The host's users, so that a uid the local process runs as has its name in the container.
        for path in ("/etc/passwd", "/etc/group"):
            volumes[path] = {"bind": path, "mode": "ro"}
        return {
            "network_mode": "host",
            "user": f"{uid}:{gid}",
            "working_dir": str(self.workdir),
            "entrypoint": [],
            "volumes": volumes,
            "environment": dict(options.get("env") or {}),
            "labels": {LABEL: OWNER},
            "init": False,
        }

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout_s: float = 90) -> None:
        """Start the container (`docker start` of the same one after a stop or a kill) and
        return once the server answers its protocol."""
        if self.is_running():
            raise HarnessError(f"{self.name}: already running (container {self._short_id()})")
        self._prepare()
        if self._container is None:
            self._container = self._build()
            try:
                self._container.start()
            except Exception as exc:
                self._container = None
                raise HarnessError(f"{self.name}: cannot start {self.image}: {exc}") from None
            processes.register(id(self), self.remove)
        else:
            self._wrapped().start()
        self.pid = self._container_pid()
        log.info("%s: started container %s (%s)", self.name, self._short_id(), self.image)
        self._wait_container_ready(timeout_s)

    def _wait_container_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.is_running():
                raise HarnessError(
                    f"{self.name}: container exited while starting:\n{self.log_tail(40)}"
                )
            if self._probe():
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise HarnessError(
                    f"{self.name}: container not ready after {timeout_s:.0f} s:\n"
                    f"{self.log_tail(40)}"
                )
            time.sleep(PROBE_INTERVAL_S)

    def stop(self, timeout_s: float = 30) -> None:
        """`docker stop`: the graceful signal, SIGKILL after timeout_s. The container stays."""
        if self._container is not None and self.is_running():
            wrapped = self._wrapped()
            if self.is_paused():
                wrapped.unpause()
            wrapped.stop(timeout=max(1, int(timeout_s)))
            self._wait_exited(timeout_s + 10)
        self.pid = None

    def kill(self) -> None:
        """`docker kill` (SIGKILL); returns once the container has exited."""
        if self._container is not None and self.is_running():
            self._wrapped().kill(signal="SIGKILL")
            self._wait_exited(30)
        self.pid = None

    def pause(self) -> None:
        """`docker pause`: every process of the container frozen (cgroup freezer)."""
        self._require_running()
        self._wrapped().pause()

    def resume(self) -> None:
        self._require_running()
        self._wrapped().unpause()

    def is_running(self) -> bool:
        return self._status() in ("running", "paused")

    def is_paused(self) -> bool:
        return self._status() == "paused"

    def log_tail(self, lines: int = 200) -> str:
        if self._container is None:
            text = self._saved_log
        else:
            try:
                text = self._wrapped().logs().decode(errors="replace")
            except Exception:  # the engine is gone: the last copy is what there is
                text = self._saved_log
        return "\n".join(text.splitlines()[-lines:])

    def remove(self) -> None:
        """Delete the container (its data stays in the workdir)."""
        if self._container is not None:
            self._save_log()
            try:
                self._wrapped().remove(force=True, v=True)
            except Exception as exc:  # already gone
                log.debug("%s: remove: %s", self.name, exc)
            self._container = None
        self.pid = None
        processes.unregister(id(self))

    def adopt(self, pid: int | None) -> None:
        raise HarnessError(f"{self.name}: a container cannot be taken over by another process")

    def detach(self) -> None:
        """Leave the container running when this interpreter exits."""
        processes.unregister(id(self))

    def state(self) -> dict[str, Any]:
        container_id = self._wrapped().id if self._container is not None else None
        return {"workdir": str(self.workdir), "container": container_id, "ports": self.ports()}

    # -- internals ----------------------------------------------------------------------------

    def _build(self) -> Any:
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.container import DockerContainer

        testcontainers_config.ryuk_disabled = True
        options = self._run_options()
        name = f"rs-{self.name}-{uuid.uuid4().hex[:8]}"
        container = DockerContainer(self.image).with_name(name)
        container = container.with_command(self.container_command())
        for key, value in options.pop("environment").items():
            container = container.with_env(key, value)
        for host, mount in options.pop("volumes").items():
            container = container.with_volume_mapping(host, mount["bind"], mount["mode"])
        return container.with_kwargs(**options)

    def _wrapped(self) -> Any:
        if self._container is None:
            raise HarnessError(f"{self.name}: container not started")
        return self._container.get_wrapped_container()

    def _status(self) -> str | None:
        if self._container is None:
            return None
        wrapped = self._wrapped()
        try:
            wrapped.reload()
        except Exception:  # removed behind our back
            return None
        return wrapped.status

    def _container_pid(self) -> int | None:
        wrapped = self._wrapped()
        wrapped.reload()
        return int(wrapped.attrs["State"]["Pid"]) or None

    def _wait_exited(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.is_running():
            if time.monotonic() >= deadline:
                raise HarnessError(f"{self.name}: container still running after {timeout_s} s")
            time.sleep(0.05)
        self._save_log()

    def _save_log(self) -> None:
        try:
            self._saved_log = self._wrapped().logs().decode(errors="replace")
        except Exception:
            return
        self.log_path.write_text(self._saved_log)

    def _short_id(self) -> str:
        return self._wrapped().short_id if self._container is not None else "-"

    def _stop_at_exit(self) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.image} {self.ports()}>"


class ActiveMQContainer(ContainerService, ActiveMQ):
    """The harness broker (ActiveMQ's arguments) in a reporting/activemq container."""

    image = ACTIVEMQ_IMAGE


class ZooKeeperContainer(ContainerService, ZooKeeper):
    """The harness ZooKeeper in a reporting/zookeeper container."""

    image = ZOOKEEPER_IMAGE


class PostgresContainer(ContainerService, Postgres):
    """The harness PostgreSQL (initdb on the host) in a reporting/postgres container, run as the
    host's postgres user."""

    image = POSTGRES_IMAGE


class InstanceContainer(ContainerService, Instance):
    """A Reporting Server instance in a reporting/server container: `reporting-server run` with
    the config the local Instance writes. Mounted: the folder holding the instance's workdir
    (where the harness puts journal folders and files the config names), and `mounts` more."""

    image = SERVER_IMAGE

    def __init__(
        self, workdir: Path | str, config: dict[str, Any], *, mounts: list[Path] | None = None
    ) -> None:
        super().__init__(workdir, config)
        self._extra_mounts = [Path(p).resolve() for p in mounts or []]

    def mounts(self) -> list[Path]:
        return [self.workdir.parent, *self._extra_mounts]

    def container_command(self) -> list[str]:
        return ["reporting-server", "run", "--config", str(self.config_path)]

    @property
    def server_pid(self) -> int | None:
        """The server's pid in the container's own pid namespace (the host's pid is `pid`)."""
        if self.pid is None:
            return None
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
        return self.pid

    def start(self, timeout_s: float = 90) -> None:
        # Instance.start retries on a taken HTTP port; a container is made once, so start once.
        ContainerService.start(self, timeout_s)
