"""Stack: one PostgreSQL, ActiveMQ and ZooKeeper for a demo pair, findable by later processes.

`reporting-server stack up` starts a Stack and exits; `status` and `down` run as new processes,
so the pids (or container ids) and ports go to <dir>/stack.json, which they read back.
"""

import json
import logging
import os
from pathlib import Path
from typing import Any

from reporting.errors import HarnessError
from reporting.harness.activemq import ActiveMQ
from reporting.harness.postgres import Postgres
from reporting.harness.zookeeper import ZooKeeper

log = logging.getLogger(__name__)

STATE_FILE = "stack.json"


class Stack:
    """The three servers of a pair under one directory (<dir>/postgres, /activemq, /zookeeper)."""

    def __init__(self, dir: Path | str, *, backend: str = "local") -> None:
        self.dir = Path(dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / STATE_FILE
        saved = self._read_state()
        if saved and saved.get("backend", backend) != backend:
            raise HarnessError(f"{self.dir} holds a {saved['backend']} stack, not {backend}")
        self.backend = backend
        ports = {name: entry.get("ports", {}) for name, entry in saved.get("services", {}).items()}
        if backend == "local":
            self.postgres: Any = Postgres(self.dir / "postgres", **ports.get("postgres", {}))
            self.activemq: Any = ActiveMQ(self.dir / "activemq", **ports.get("activemq", {}))
            self.zookeeper: Any = ZooKeeper(self.dir / "zookeeper", **ports.get("zookeeper", {}))
            for name, service in self.services.items():
                service.adopt(saved.get("services", {}).get(name, {}).get("pid"))
        elif backend == "containers":
            from reporting.harness import containers

            if saved.get("services"):
                raise HarnessError(
                    f"{self.dir}: a containers stack cannot be taken over by a new process; "
                    "remove its containers with `docker rm -f`"
                )
            self.postgres = containers.PostgresContainer(self.dir / "postgres")
            self.activemq = containers.ActiveMQContainer(self.dir / "activemq")
            self.zookeeper = containers.ZooKeeperContainer(self.dir / "zookeeper")
        else:
            raise HarnessError(f"backend must be 'local' or 'containers', not {backend!r}")

    @property
    def services(self) -> dict[str, Any]:
        return {"postgres": self.postgres, "activemq": self.activemq, "zookeeper": self.zookeeper}

    def start_all(self, timeout_s: float = 90) -> None:
        """Start whatever is not running; on a failure stop what this call started."""
        started = []
        try:
            for service in self.services.values():
                if not service.is_running():
                    service.start(timeout_s)
                    started.append(service)
        except BaseException:
            for service in started:
                service.stop()
            raise
        finally:
            self._write_state()

    def stop_all(self, timeout_s: float = 30) -> None:
        for service in reversed(list(self.services.values())):
            service.stop(timeout_s)
        self._write_state()

    def detach(self) -> None:
        """Leave the servers running after this process exits (`stack up`)."""
        for service in self.services.values():
            service.detach()

    def endpoints(self) -> dict[str, str]:
        """What a client or a server config needs to reach each server."""
        return {
            "database": self.postgres.url,
            "broker": self.activemq.host,
            "zookeeper": self.zookeeper.hosts,
        }

    def status(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir),
            "backend": self.backend,
            "endpoints": self.endpoints(),
            "services": {
                name: {
                    "running": service.is_running(),
                    "pid": service.pid,
                    "log": str(service.log_path),
                    **service.ports(),
                }
                for name, service in self.services.items()
            },
        }

    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise HarnessError(f"{self.state_path}: unreadable stack state: {exc}") from None

    def _write_state(self) -> None:
        state = {
            "backend": self.backend,
            "services": {name: service.state() for name, service in self.services.items()},
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_path)
