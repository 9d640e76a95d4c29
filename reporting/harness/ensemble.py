"""A ZooKeeper ensemble: three (or `size`) QuorumPeerMain processes on 127.0.0.1.

Each member is a Service of its own, with its own dataDir, `myid`, client port and quorum and
election ports, so a test can kill -9, pause or restart one member while the others go on. A
member counts as ready once it serves as leader or follower, which needs a quorum: the members
of a fresh ensemble are therefore started together.
"""

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reporting.errors import HarnessError
from reporting.harness.ports import LOOPBACK, free_port
from reporting.harness.zookeeper import INSTALL_HINT, TICK_MS, ZooKeeper

_STANDALONE_MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"
_QUORUM_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
# Ticks a follower may take to connect to and sync with a new leader (4 s), and may lag behind
# it once synced (1 s); the leader's death is seen sooner, when its sockets close.
INIT_LIMIT_TICKS = 20
SYNC_LIMIT_TICKS = 5
SERVING_MODES = ("leader", "follower")


class QuorumPeer(ZooKeeper):
    """One member of an ensemble; `servers` maps each member's myid to its (quorum, election)
    ports, this member's included."""

    def __init__(
        self,
        workdir: Path | str,
        *,
        myid: int,
        port: int,
        servers: dict[int, tuple[int, int]],
    ) -> None:
        self.name = f"zookeeper-{myid}"
        super().__init__(workdir, port=port)
        self.myid = myid
        self.servers = dict(servers)

    def ports(self) -> dict[str, int]:
        quorum, election = self.servers[self.myid]
        return {"port": self.port, "quorum": quorum, "election": election}

    def mode(self) -> str | None:
        """The `srvr` mode, leader or follower; None while in no quorum or not answering."""
        try:
            answer = self.command("srvr")
        except OSError:
            return None
        for line in answer.splitlines():
            if line.startswith("Mode:"):
                mode = line.partition(":")[2].strip()
                return mode if mode in SERVING_MODES else None
        return None

    def _prepare(self) -> None:
        if not Path("/usr/share/java/zookeeper.jar").exists() or shutil.which("java") is None:
            raise HarnessError(f"{self.name}: zookeeper.jar or java not found; run: {INSTALL_HINT}")
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        (data / "myid").write_text(f"{self.myid}\n")
        settings: dict[str, object] = {
            "tickTime": TICK_MS,
            "initLimit": INIT_LIMIT_TICKS,
            "syncLimit": SYNC_LIMIT_TICKS,
            "minSessionTimeout": 2 * TICK_MS,
            "maxSessionTimeout": 60_000,
            "dataDir": data,
            "clientPort": self.port,
            "clientPortAddress": LOOPBACK,
            "maxClientCnxns": 0,
            "admin.enableServer": "false",
            "4lw.commands.whitelist": "srvr,ruok,mntr",
            "autopurge.purgeInterval": 0,
            "reconfigEnabled": "false",
        }
        for myid, (quorum, election) in sorted(self.servers.items()):
            settings[f"server.{myid}"] = f"{LOOPBACK}:{quorum}:{election}"
        text = "".join(f"{key}={value}\n" for key, value in settings.items())
        (self.workdir / "zoo.cfg").write_text(text)

    def _command(self) -> list[str]:
        # The standalone server's JVM and class path; only the main class differs.
        command = super()._command()
        command[command.index(_STANDALONE_MAIN)] = _QUORUM_MAIN
        return command

    def _probe(self) -> bool:
        return self.mode() is not None


class ZooKeeperEnsemble:
    """`size` members on free loopback ports; `hosts` is the connection string for kazoo."""

    def __init__(self, workdir: Path | str, *, size: int = 3) -> None:
        if size < 1:
            raise HarnessError(f"zookeeper ensemble: size must be >= 1, got {size}")
        workdir = Path(workdir)
        servers = {myid: (free_port(), free_port()) for myid in range(1, size + 1)}
        self.members = [
            QuorumPeer(workdir / f"zk{myid}", myid=myid, port=free_port(), servers=servers)
            for myid in servers
        ]

    @property
    def hosts(self) -> str:
        return ",".join(member.hosts for member in self.members)

    def start(self, timeout_s: float = 90) -> None:
        """Start every member that is not running; return once each serves in a quorum."""
        down = [member for member in self.members if not member.is_running()]
        # Each start waits for a quorum, which the others complete: they must run side by side.
        with ThreadPoolExecutor(max_workers=max(1, len(down))) as pool:
            futures = [pool.submit(member.start, timeout_s) for member in down]
        errors = [future.exception() for future in futures if future.exception() is not None]
        if errors:
            self.kill()
            raise errors[0]

    def __enter__(self) -> "ZooKeeperEnsemble":
        """Started for a `with` block (a fixture's life), stopped at its end."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def kill(self) -> None:
        for member in self.members:
            member.kill()

    def member(self, myid: int) -> QuorumPeer:
        return self.members[myid - 1]

    def leader(self) -> QuorumPeer | None:
        """The member whose `srvr` says leader, if any."""
        return next((m for m in self.members if m.is_running() and m.mode() == "leader"), None)

    def followers(self) -> list[QuorumPeer]:
        return [m for m in self.members if m.is_running() and m.mode() == "follower"]

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(f"--- {m.name}\n{m.log_tail(lines)}" for m in self.members)

    def __repr__(self) -> str:
        return f"<ZooKeeperEnsemble {self.hosts}>"
