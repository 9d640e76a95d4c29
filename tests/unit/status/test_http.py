"""The HTTP endpoint stays responsive, with a bounded number of threads, however many clients
connect and say nothing or say it slowly."""

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from reporting.status import http
from reporting.status.http import StatusServer


@pytest.fixture
def server() -> Iterator[StatusServer]:
    status = StatusServer(
        "127.0.0.1", 0, status=lambda: {"name": "rs"}, registry=CollectorRegistry()
    )
    status.start()
    yield status
    status.stop()


def get(server: StatusServer, path: str, timeout_s: float = 1.0) -> bytes:
    url = f"http://127.0.0.1:{server.port}{path}"
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        return reply.read()


def closed_by_server(sock: socket.socket, timeout_s: float) -> bool:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_healthz_answers_within_a_second_beside_500_idle_connections(
    server: StatusServer,
) -> None:
    threads = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(500)]
    try:
        # Half of them have begun a request and stopped.
        for sock in idle[::2]:
            sock.sendall(b"GET /status HTTP/1.1\r\n")
        for _ in range(3):
            started = time.monotonic()
            assert get(server, "/healthz") == b"ok\n"
            assert time.monotonic() - started < 1.0
        assert b'"name": "rs"' in get(server, "/status")
        # At most the pool's threads more, however many connections there are.
        assert threading.active_count() <= threads + http.WORKERS
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\n"])
def test_a_request_not_complete_in_time_is_ended(
    server: StatusServer, monkeypatch, sent: bytes
) -> None:
    monkeypatch.setattr(http, "REQUEST_TIMEOUT_S", 0.3)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(sent)
        assert closed_by_server(sock, 5.0)


def test_an_oversized_request_head_is_refused(server: StatusServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * http.MAX_HEAD_BYTES)
        assert closed_by_server(sock, 5.0)


def test_a_request_sent_in_pieces_is_answered(server: StatusServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        for piece in (b"GET /hea", b"lthz HTTP/1.0\r\n", b"\r\n"):
            sock.sendall(piece)
        sock.settimeout(5)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"ok\n")


def test_the_longest_waiting_connection_makes_room(server: StatusServer, monkeypatch) -> None:
    monkeypatch.setattr(http, "MAX_WAITING", 10)
    first = socket.create_connection(("127.0.0.1", server.port))
    others = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
    try:
        assert closed_by_server(first, 5.0)
        assert get(server, "/healthz") == b"ok\n"
    finally:
        for sock in [first, *others]:
            sock.close()


def test_clients_that_never_read_their_answers_do_not_hold_healthz(server: StatusServer) -> None:
    # Each asks for an answer and reads none of it, with the smallest receive buffer there is.
    stalled = []
    try:
        for _ in range(http.WORKERS * 4):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            stalled.append(sock)
        started = time.monotonic()
        assert get(server, "/healthz") == b"ok\n"
        assert time.monotonic() - started < 1.0
    finally:
        for sock in stalled:
            sock.close()


def test_a_taken_port_is_an_os_error_and_leaves_nothing_running() -> None:
    """A failed bind raises the bind's OSError (which `run` turns into an error naming
    http.listen), not an error of the half-made server's clean-up, and starts no thread."""
    before = set(threading.enumerate())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as caught:
            StatusServer("127.0.0.1", port, status=dict, registry=CollectorRegistry())
    assert caught.type is OSError and caught.value.strerror == "Address already in use"
    assert set(threading.enumerate()) <= before
