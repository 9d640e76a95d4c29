class ReportingError(Exception):
    """Base class for errors of the reporting server."""

    def __init__(self, *args: object, **facts: object) -> None:
        super().__init__(*args)
        # The facts a handler may act on (key, host, ...), given as keywords: attributes.
        vars(self).update(facts)


class ConfigError(ReportingError):
    """Raised when the configuration file is missing, unreadable or invalid."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message, key=key)


class BrokerError(ReportingError):
    """Raised when no broker of the host list can be reached."""


class BrokerRefused(BrokerError):
    """Raised when a broker refuses the login or a subscription: credentials or rights are wrong."""

    def __init__(self, host: str, user: str | None, reason: str) -> None:
        message = f"broker {host} refused user {user!r}: {reason}"
        super().__init__(message, host=host, user=user, reason=reason)


class BrokerUntrusted(BrokerError):
    """Raised when a broker's TLS certificate fails verification against [broker] ca_file."""

    def __init__(self, host: str, ca_file: str, reason: str) -> None:
        message = f"broker {host}: certificate not trusted by {ca_file}: {reason}"
        super().__init__(message, host=host, ca_file=ca_file, reason=reason)


class BrokerUnreachable(BrokerError):
    """Raised when a broker does not answer, or its connection breaks: an outage to wait out."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"broker {host}: {reason}", host=host, reason=reason)


class HarnessError(ReportingError):
    """Raised when a local service of the harness cannot be started or stopped."""


class ZooKeeperRefused(ReportingError):
    """Raised when this instance cannot take part in its election: its ZooKeeper credentials are
    wrong or missing, or a node the pair relies on is not the pair's own."""

    def __init__(self, hosts: str, node: str, reason: str) -> None:
        message = f"zookeeper {hosts}: {node}: {reason}"
        super().__init__(message, hosts=hosts, node=node, reason=reason)


class ZooKeeperUnreachable(ReportingError):
    """Raised when no ZooKeeper server of the list answers within the time allowed."""

    def __init__(self, hosts: str, timeout_s: float) -> None:
        message = f"zookeeper {hosts}: no server answered within {timeout_s:g} s"
        super().__init__(message, hosts=hosts)
