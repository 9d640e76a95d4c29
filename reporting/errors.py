class ReportingError(Exception):
    """Base class for errors of the reporting server."""


class ConfigError(ReportingError):
    """Raised when the configuration file is missing, unreadable or invalid."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class BrokerError(ReportingError):
    """Raised when no broker of the host list can be reached."""


class BrokerRefused(BrokerError):
    """Raised when a broker refuses the login or a subscription: credentials or rights are wrong."""

    def __init__(self, host: str, user: str | None, reason: str) -> None:
        super().__init__(f"broker {host} refused user {user!r}: {reason}")
        self.host = host
        self.user = user
        self.reason = reason


class BrokerUntrusted(BrokerError):
    """Raised when a broker's TLS certificate fails verification against [broker] ca_file."""

    def __init__(self, host: str, ca_file: str, reason: str) -> None:
        super().__init__(f"broker {host}: certificate not trusted by {ca_file}: {reason}")
        self.host = host
        self.ca_file = ca_file
        self.reason = reason


class BrokerUnreachable(BrokerError):
    """Raised when a broker does not answer, or its connection breaks: an outage to wait out."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"broker {host}: {reason}")
        self.host = host
        self.reason = reason


class HarnessError(ReportingError):
    """Raised when a local service of the harness cannot be started or stopped."""


class ZooKeeperRefused(ReportingError):
    """Raised when this instance cannot take part in its election: its ZooKeeper credentials are
    wrong or missing, or a node the pair relies on is not the pair's own."""

    def __init__(self, hosts: str, node: str, reason: str) -> None:
        super().__init__(f"zookeeper {hosts}: {node}: {reason}")
        self.hosts = hosts
        self.node = node
        self.reason = reason


class ZooKeeperUnreachable(ReportingError):
    """Raised when no ZooKeeper server of the list answers within the time allowed."""

    def __init__(self, hosts: str, timeout_s: float) -> None:
        super().__init__(f"zookeeper {hosts}: no server answered within {timeout_s:g} s")
        self.hosts = hosts
