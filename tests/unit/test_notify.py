"""The notify protocol against a unix datagram socket the test listens on (no server)."""

import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reporting.notify import Notifier, ServiceNotifier, watchdog_interval_s


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_datagram_fields_reach_a_path_socket(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    notifier.ready("active, epoch 3")
    assert sock.recv(4096) == b"READY=1\nSTATUS=active, epoch 3"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_at_sign_is_the_abstract_namespace() -> None:
    name = f"reporting-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        Notifier(f"@{name}").watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    notifier.ready("x")  # no socket to send to: a no-op


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path, caplog) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    notifier.watchdog()
    notifier.watchdog()
    assert [r.levelname for r in caplog.records].count("WARNING") == 1


def test_watchdog_interval_is_for_this_process_only() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000"}, pid=7) == 4.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "7"}, pid=7) == 4.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert watchdog_interval_s({}, pid=7) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "x"}, pid=7) is None


def _next(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_waits_for_the_election_and_pings_stop_while_not_working(
    listener: tuple[str, socket.socket],
) -> None:
    path, sock = listener
    joined = threading.Event()
    working = threading.Event()
    working.set()
    role = ["standby"]
    service = ServiceNotifier(
        Notifier(path),
        joined=joined.is_set,
        describe=lambda: role[0],
        working=lambda within_s: working.is_set(),
        watchdog_s=0.8,
        every_s=0.02,
    )
    service.start()
    try:
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # nothing before the election is joined
        joined.set()
        sock.settimeout(5)
        assert _next(sock) == "READY=1\nSTATUS=standby"
        assert _next(sock) == "WATCHDOG=1"
        role[0] = "active, epoch 1"
        while (line := _next(sock)) == "WATCHDOG=1":
            pass
        assert line == "STATUS=active, epoch 1"
        working.clear()
        sock.settimeout(0.3)
        try:  # at most one ping may have been on its way
            sock.recv(4096)
        except TimeoutError:
            pass
        sock.settimeout(1.0)  # more than four ping intervals
        with pytest.raises(TimeoutError):
            sock.recv(4096)
        working.set()
        sock.settimeout(5)
        assert _next(sock) == "WATCHDOG=1"
    finally:
        service.stop()
    sock.settimeout(5)
    while (line := _next(sock)) == "WATCHDOG=1":
        pass
    assert line == "STOPPING=1\nSTATUS=stopping"
