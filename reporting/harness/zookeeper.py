"""ZooKeeper from Debian's `zookeeper` package, one standalone server per workdir."""

import shutil
from pathlib import Path

from reporting.errors import HarnessError
from reporting.harness import probes
from reporting.harness.ports import LOOPBACK, free_port
from reporting.harness.service import Service

INSTALL_HINT = "scripts/setup (the packages of scripts/packages)"
_JARS = Path("/usr/share/java")
# zookeeper.jar's manifest names its dependencies; slf4j-simple gives it a log on stderr.
_CLASS_PATH = ("zookeeper.jar", "slf4j-simple.jar")
# Short ticks so that sessions of 1-2 s (2 to 20 ticks) are allowed.
TICK_MS = 200


class ZooKeeper(Service):
    """A standalone ZooKeeper server on 127.0.0.1 with 4lw commands and no admin server."""

    name = "zookeeper"

    def __init__(self, workdir: Path | str, *, port: int | None = None) -> None:
        super().__init__(workdir)
        self.port = port or free_port()

    @property
    def hosts(self) -> str:
        """Connection string for kazoo."""
        return f"{LOOPBACK}:{self.port}"

    def ports(self) -> dict[str, int]:
        return {"port": self.port}

    def command(self, word: str) -> str:
        """Answer of a four-letter word: ruok, srvr or mntr."""
        return probes.zookeeper_command(self.port, word)

    def _prepare(self) -> None:
        if not (_JARS / "zookeeper.jar").exists() or shutil.which("java") is None:
            raise HarnessError(
                f"zookeeper: {_JARS / 'zookeeper.jar'} or java not found; run: {INSTALL_HINT}"
            )
        (self.workdir / "data").mkdir(exist_ok=True)
        settings = {
            "tickTime": TICK_MS,
            "minSessionTimeout": 2 * TICK_MS,
            "maxSessionTimeout": 60_000,
            "dataDir": self.workdir / "data",
            "clientPort": self.port,
            "clientPortAddress": LOOPBACK,
            "maxClientCnxns": 0,
            "admin.enableServer": "false",
            "4lw.commands.whitelist": "srvr,ruok,mntr,stat,cons",
            "autopurge.purgeInterval": 0,
        }
        text = "".join(f"{key}={value}\n" for key, value in settings.items())
        (self.workdir / "zoo.cfg").write_text(text)

    def _command(self) -> list[str]:
        return [
            "java",
            "-Xms32m",
            "-Xmx128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            "-Dzookeeper.admin.enableServer=false",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd HH:mm:ss,SSS",
            "-cp",
            ":".join(str(_JARS / jar) for jar in _CLASS_PATH),
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            str(self.workdir / "zoo.cfg"),
        ]

    def _probe(self) -> bool:
        return probes.zookeeper_ready(self.port)
