"""Free TCP ports on the loopback interface."""

import random
import socket
import threading
from pathlib import Path

LOOPBACK = "127.0.0.1"

# Ports are drawn from here up to the kernel's ephemeral range, which outgoing connections take
# their local ports from: a server killed and restarted on its port finds it still free, where a
# port from that range may meanwhile be some client's.
LOWEST = 10000
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed: set[int] = set()
_lock = threading.Lock()
# A generator of its own, seeded from the OS: a test that seeds the module's generator must not
# make two processes of a session draw the same ports.
_random = random.Random()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = map(int, _EPHEMERAL.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port() -> int:
    """A port nobody listens on right now, below the ephemeral range and not handed out before by
    this process (so not one a server of this session was given and has yet to bind)."""
    low, _high = ephemeral_range()
    with _lock:
        for _ in range(200 if low - LOWEST >= 1000 else 0):
            port = _random.randrange(LOWEST, low)
            if port in _handed:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((LOOPBACK, port))
                except OSError:
                    continue
            _handed.add(port)
            return port
    # No room below the ephemeral range: the kernel picks one from it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_answers(port: int, host: str = LOOPBACK, timeout_s: float = 0.5) -> bool:
    """True when something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
