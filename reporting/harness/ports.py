"""Free TCP ports on the loopback interface."""

import os
import random
import re
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


def share(low: int, high: int) -> tuple[int, int]:
    """This process's part of the ports [low, high): all of them, or under pytest-xdist the
    worker's own slice.

    A port is handed out some time before its server binds it (a pair's second instance seconds
    later, a killed server's port is kept for its restart), and `_handed` is one process's: two
    workers drawing from one range could hand out the same port, and the second server to bind
    it fails, or a readiness probe finds the other worker's server there."""
    worker = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    try:
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    except ValueError:
        count = 1
    if worker is None or count <= 1 or int(worker[1]) >= count:
        return low, high
    size = (high - low) // count
    start = low + int(worker[1]) * size
    return start, start + size


def free_port() -> int:
    """A port nobody listens on right now, below the ephemeral range, in this process's share of
    it (`share`) and not handed out before by this process (so not one a server of this session
    was given and has yet to bind)."""
    low, _high = ephemeral_range()
    first, last = share(LOWEST, low)
    with _lock:
        for _ in range(200 if last - first >= 100 else 0):
            port = _random.randrange(first, last)
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
