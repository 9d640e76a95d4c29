"""Passwords that would cross the network unencrypted: named once at start-up, so an operator
who left TLS off towards a remote host hears of it. Loopback hops are not named: what travels
on them stays on the machine."""

import ipaddress

from reporting.config import Config

# libpq's sslmodes that never talk without TLS ("prefer", the default, falls back to plain).
TLS_SSLMODES = ("require", "verify-ca", "verify-full")


def plaintext_passwords(config: Config) -> list[str]:
    """One line per hop whose password goes to a non-loopback host without TLS."""
    lines = []
    if config.broker.password is not None and not config.broker.tls:
        remote = [str(h) for h in config.broker.hosts if not is_loopback(h.host)]
        if remote:
            lines.append(
                f"the broker password goes to {', '.join(remote)} over plain STOMP;"
                " set [broker] tls = true and ca_file"
            )
    remote = _database_hosts_without_tls(config.database.url)
    if remote:
        lines.append(
            f"the database password goes to {', '.join(remote)} without TLS;"
            " add ?sslmode=verify-full&sslrootcert=CA to [database] url"
        )
    return lines


def _database_hosts_without_tls(url: str) -> list[str]:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.password is None or parsed.get_backend_name() != "postgresql":
        return []
    modes = _query_values(parsed.query, "sslmode")
    if modes and modes[-1] in TLS_SSLMODES:
        return []
    # The multi-host form puts hosts in the query (`?host=a:5432&host=b:5432`).
    hosts = [parsed.host] if parsed.host else []
    hosts += [h for value in _query_values(parsed.query, "host") for h in value.split(",")]
    # A host starting with "/" is a Unix socket folder: local.
    return [h for h in hosts if not h.startswith("/") and not is_loopback(_host_of(h))]


def _query_values(query: dict, key: str) -> list[str]:
    value = query.get(key, ())
    return [value] if isinstance(value, str) else list(value)


def _host_of(host_port: str) -> str:
    if host_port.startswith("["):
        return host_port[1:].partition("]")[0]
    return host_port.rpartition(":")[0] if host_port.count(":") == 1 else host_port


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere
