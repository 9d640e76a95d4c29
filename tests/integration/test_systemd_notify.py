"""The systemd notify protocol of a real `reporting-server run`, against a unix datagram socket
this test listens on ($NOTIFY_SOCKET is inherited by the instance's process)."""

import ctypes
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reporting.harness.instance import Instance
from reporting.harness.waiting import wait_until

pytestmark = pytest.mark.integration

PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH = 0x4206, 0x4207, 17
WALL = 0x40000000


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def next(self, timeout_s: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(4096).decode()
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.splitlines())
        self.messages.append(message)
        return message

    def until(self, what: Callable[[dict[str, str]], bool], timeout_s: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            message = self.next(left)
            if message is not None and what(message):
                return message
        raise AssertionError(f"no such notify message within {timeout_s} s: {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable]:
    """notify_socket(name, watchdog_s=None): a socket the next instance started reports to."""
    sockets: list[NotifySocket] = []

    def make(name: str, watchdog_s: float | None = None) -> NotifySocket:
        sock = NotifySocket(tmp_path / f"notify-{name}")
        sockets.append(sock)
        monkeypatch.setenv("NOTIFY_SOCKET", sock.path)
        if watchdog_s is None:
            monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        else:
            monkeypatch.setenv("WATCHDOG_USEC", str(int(watchdog_s * 1e6)))
        return sock

    yield make
    for sock in sockets:
        sock.close()


def test_pair_ready_after_joining_status_on_role_changes_stopping_on_sigterm(
    shared_pair: Callable[..., list[Instance]], notify_socket: Callable
) -> None:
    a, b = shared_pair()
    sock_a = notify_socket("a")
    a.start()
    ready = sock_a.until(lambda m: "READY" in m, 30)
    assert ready["STATUS"].startswith("active, epoch ")

    sock_b = notify_socket("b")
    b.start()
    ready = sock_b.until(lambda m: "READY" in m, 30)
    # Ready only once it has joined the election: it knows who holds the role.
    assert ready["STATUS"] == "standby, active is rs-a"
    assert b.status()["role"] == "standby"

    a.stop()
    stopping = sock_a.until(lambda m: "STOPPING" in m, 10)
    assert stopping == {"STOPPING": "1", "STATUS": "stopping"}
    # Between the two it may say it is taking the role (it holds the lock, not yet active); it
    # never names itself as another's standby.
    changed = sock_b.until(lambda m: m.get("STATUS", "").startswith("active, epoch "), 30)
    assert "READY" not in changed  # READY comes once
    assert not any(m.get("STATUS") == "standby, active is rs-b" for m in sock_b.messages), (
        sock_b.messages
    )


def _consumer_thread(pid: int, name: str) -> int:
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().strip() == f"{name}-consumer"[:15]:
            return int(task.name)
    raise AssertionError(f"no thread named {name}-consumer in process {pid}")


def test_watchdog_pings_stop_while_the_consumer_thread_is_wedged(
    standalone: Callable[..., Instance], notify_socket: Callable
) -> None:
    instance = standalone("rs-wd")
    sock = notify_socket("wd", watchdog_s=4.0)
    instance.start()
    sock.until(lambda m: "READY" in m, 30)
    wait_until(lambda: instance.status()["broker"] == "connected", 30, "the consumer to subscribe")
    # Pinged every second (a quarter of WatchdogSec) while the consumer works.
    for _ in range(3):
        assert sock.until(lambda m: "WATCHDOG" in m, 3) == {"WATCHDOG": "1"}

    # The consumer thread alone is frozen where it stands (ptrace stops one thread, unlike
    # SIGSTOP, which stops the process): as if stuck in a journal fsync that never returns.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    tid = _consumer_thread(instance.pid, "rs-wd")
    if libc.ptrace(PTRACE_SEIZE, tid, None, None) != 0:
        pytest.fail(f"ptrace(PTRACE_SEIZE) of the consumer thread: errno {ctypes.get_errno()}")
    try:
        assert libc.ptrace(PTRACE_INTERRUPT, tid, None, None) == 0
        os.waitpid(tid, WALL)
        wedged_at = time.monotonic()
        # Pings may go on until the stall passes half the watchdog interval (2 s), then stop.
        last_ping = wedged_at
        while (message := sock.next(6.0)) is not None:
            if "WATCHDOG" in message:
                last_ping = time.monotonic()
            assert time.monotonic() - wedged_at < 20, "pings went on with the consumer wedged"
        assert last_ping - wedged_at <= 3.5, "pinged after the stall passed half the interval"
    finally:
        libc.ptrace(PTRACE_DETACH, tid, None, None)
    # The thread goes on: so do the pings.
    assert sock.until(lambda m: "WATCHDOG" in m, 5) == {"WATCHDOG": "1"}
