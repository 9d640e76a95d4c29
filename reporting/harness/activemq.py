"""ActiveMQ Classic from Debian's `activemq` package, one broker per workdir.

The broker listens for STOMP only, keeps its KahaDB store in the workdir (messages survive
kill -9) and logs to <workdir>/activemq.log.
"""

import shutil
from collections.abc import Mapping
from html import escape
from importlib import resources
from pathlib import Path

from reporting.errors import HarnessError
from reporting.harness import probes
from reporting.harness.ports import LOOPBACK, free_port
from reporting.harness.service import Service
from reporting.harness.tls import TlsBundle

ACTIVEMQ_HOME = Path("/usr/share/activemq")
INSTALL_HINT = "scripts/setup (the packages of scripts/packages)"
# Needed by the broker's jms-map-json rendering of statistics, which queue_depth reads. The
# activemq package only recommends them, so an install without recommends lacks them.
_STATISTICS_JARS = ("xstream.jar", "jettison.jar")
_SYSTEM_JARS = Path("/usr/share/java")


# The two kinds of broker user: a Reporting Server reads the report queues, a producer writes them.
SERVER = "server"
PRODUCER = "producer"
ROLES = (SERVER, PRODUCER)
# The report queues of every pair on the broker: [<prefix>.]gvp.reporting.<kind>.
REPORT_QUEUES = ("gvp.reporting.>", "*.gvp.reporting.>")

# Users: name -> (password, role). Each role is a group of that name.
Users = Mapping[str, tuple[str, str]]


def security_xml(users: Users) -> str:
    """simpleAuthenticationPlugin + authorizationPlugin: no anonymous access; servers may only read
    the report queues (and create them, which subscribing does), producers may only write them."""
    for name, (_password, role) in users.items():
        if role not in ROLES:
            raise HarnessError(
                f"activemq: user {name!r}: role must be one of {ROLES}, got {role!r}"
            )
    entries = "".join(
        f'<authenticationUser username="{escape(name, quote=True)}"'
        f' password="{escape(password, quote=True)}" groups="{role}"/>'
        for name, (password, role) in users.items()
    )
    queues = "".join(
        f'<authorizationEntry queue="{q}" read="{SERVER}" write="{PRODUCER}" admin="{SERVER}"/>'
        for q in REPORT_QUEUES
    )
    return (
        '<simpleAuthenticationPlugin anonymousAccessAllowed="false">'
        f"<users>{entries}</users></simpleAuthenticationPlugin>"
        "<authorizationPlugin><map><authorizationMap><authorizationEntries>"
        f"{queues}"
        # Every client's session creates and reads advisory topics; ActiveMQ requires this.
        f'<authorizationEntry topic="ActiveMQ.Advisory.>" read="{SERVER},{PRODUCER}"'
        f' write="{SERVER},{PRODUCER}" admin="{SERVER},{PRODUCER}"/>'
        "</authorizationEntries></authorizationMap></map></authorizationPlugin>"
    )


def tls_xml(bundle: TlsBundle) -> str:
    """The broker's key store (its certificate) and trust store, for the stomp+ssl connector."""
    password = escape(bundle.store_password, quote=True)
    return (
        "<sslContext><sslContext"
        f' keyStore="file:{escape(str(bundle.keystore), quote=True)}"'
        f' keyStorePassword="{password}" keyStoreType="pkcs12"'
        f' trustStore="file:{escape(str(bundle.truststore), quote=True)}"'
        f' trustStorePassword="{password}" trustStoreType="pkcs12"/></sslContext>'
    )


def tls_connector_xml(host: str, port: int) -> str:
    return (
        f'<transportConnector name="stomp+ssl" uri="stomp+ssl://{host}:{port}'
        '?transport.closeAsync=false&amp;transport.hbGracePeriodMultiplier=1.5"/>'
    )


def broker_xml(
    stomp_host: str,
    stomp_port: int,
    *,
    users: Users | None = None,
    tls: TlsBundle | None = None,
    stomp_tls_port: int | None = None,
) -> str:
    """The harness broker configuration with its STOMP listener on stomp_host:stomp_port; with
    `users`, every client must log in as one of them (see security_xml); with `tls`, a second
    listener, stomp+ssl on stomp_tls_port, presents the bundle's server certificate."""
    if (tls is None) != (stomp_tls_port is None):
        raise HarnessError("activemq: tls and stomp_tls_port go together")
    xml = (resources.files("reporting.harness") / "templates" / "activemq.xml").read_text()
    return (
        xml.replace("${harness.stomp.host}", stomp_host)
        .replace("${harness.stomp.port}", str(stomp_port))
        .replace("${harness.security}", security_xml(users) if users else "")
        .replace("${harness.ssl.context}", tls_xml(tls) if tls else "")
        .replace(
            "${harness.ssl.connector}",
            tls_connector_xml(stomp_host, stomp_tls_port) if stomp_tls_port else "",
        )
    )


class ActiveMQ(Service):
    """An ActiveMQ Classic broker with a STOMP connector on 127.0.0.1; with `tls` (a harness CA's
    bundle, see reporting.harness.tls) also a stomp+ssl connector presenting its certificate."""

    name = "activemq"

    def __init__(
        self,
        workdir: Path | str,
        *,
        stomp_port: int | None = None,
        users: Users | None = None,
        tls: TlsBundle | None = None,
        stomp_tls_port: int | None = None,
    ) -> None:
        super().__init__(workdir)
        self.stomp_port = stomp_port or free_port()
        # name -> (password, "server" | "producer"); None: anonymous access, no authorization.
        self.users = dict(users) if users else None
        self.tls = tls
        self.stomp_tls_port = (stomp_tls_port or free_port()) if tls is not None else None

    @property
    def host(self) -> str:
        """host:port for a STOMP client."""
        return f"{LOOPBACK}:{self.stomp_port}"

    @property
    def tls_host(self) -> str:
        """host:port for a STOMP client over TLS."""
        if self.stomp_tls_port is None:
            raise HarnessError("activemq: started without tls")
        return f"{LOOPBACK}:{self.stomp_tls_port}"

    def ports(self) -> dict[str, int]:
        ports = {"stomp_port": self.stomp_port}
        if self.stomp_tls_port is not None:
            ports["stomp_tls_port"] = self.stomp_tls_port
        return ports

    def queue_depth(self, queue: str) -> int:
        """Messages on the queue not yet acknowledged by a consumer (0 for an unknown queue)."""
        try:
            return probes.activemq_queue_depth(self.stomp_port, queue)
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise HarnessError(f"activemq: queue depth of {queue}: {exc}") from None

    def queue_stats(self, queue: str) -> dict[str, int]:
        """The queue's statistics counters: size, consumerCount, inflightCount, ... ({} for an
        unknown queue)."""
        try:
            return probes.activemq_queue_stats(self.stomp_port, queue)
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise HarnessError(f"activemq: statistics of {queue}: {exc}") from None

    def _prepare(self) -> None:
        jar = ACTIVEMQ_HOME / "bin" / "activemq.jar"
        needed = [jar, *(_SYSTEM_JARS / name for name in _STATISTICS_JARS)]
        absent = [str(path) for path in needed if not path.exists()]
        if absent or shutil.which("java") is None:
            found = ", ".join(absent) or "java"
            raise HarnessError(f"activemq: {found} not found; run: {INSTALL_HINT}")
        conf = self.workdir / "conf"
        conf.mkdir(exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        templates = resources.files("reporting.harness") / "templates"
        xml = broker_xml(
            LOOPBACK,
            self.stomp_port,
            users=self.users,
            tls=self.tls,
            stomp_tls_port=self.stomp_tls_port,
        )
        (conf / "activemq.xml").write_text(xml)
        # The generated file holds the users' passwords and the key store's.
        (conf / "activemq.xml").chmod(0o600)
        (conf / "log4j.properties").write_text(
            (templates / "activemq-log4j.properties").read_text()
        )
        # The broker adds <activemq.base>/lib to its class path.
        lib = self.workdir / "lib"
        lib.mkdir(exist_ok=True)
        for name in _STATISTICS_JARS:
            if not (lib / name).exists():
                (lib / name).symlink_to(_SYSTEM_JARS / name)

    def _command(self) -> list[str]:
        base = self.workdir
        return [
            "java",
            "-Xms64m",
            "-Xmx256m",
            # Quicker start and fewer threads on small shared machines.
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dactivemq.home={ACTIVEMQ_HOME}",
            f"-Dactivemq.base={base}",
            f"-Dactivemq.conf={base / 'conf'}",
            f"-Dactivemq.data={base / 'data'}",
            f"-Dlog4j.configuration=file:{base / 'conf' / 'log4j.properties'}",
            "-jar",
            str(ACTIVEMQ_HOME / "bin" / "activemq.jar"),
            "start",
            f"xbean:file:{base / 'conf' / 'activemq.xml'}",
        ]

    def _probe(self) -> bool:
        if not probes.stomp_ready(self.stomp_port, login=self._login()):
            return False
        if self.tls is None or self.stomp_tls_port is None:
            return True
        return probes.stomp_ready(
            self.stomp_tls_port, login=self._login(), ca_file=self.tls.ca_file
        )

    def _login(self) -> tuple[str, str] | None:
        if not self.users:
            return None
        name, (password, _role) = next(iter(self.users.items()))
        return name, password
