"""TcpProxy against a local echo server: forwarding, dark path, latency, reset."""

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from reporting.harness import TcpProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except ConnectionResetError:  # what reset() does to the server side
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        yield proxy


def _client(proxy: TcpProxy, timeout_s: float = 2) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout_s)


def test_forwards_both_ways(proxy: TcpProxy) -> None:
    with _client(proxy) as client:
        client.sendall(b"ping")
        assert client.recv(10) == b"ping"
    assert proxy.host == f"127.0.0.1:{proxy.port}"


def assert_held_until_healed(proxy: TcpProxy, client: socket.socket, data: bytes) -> None:
    """`data` sent over the dark path gets no answer; once the path heals, it comes back."""
    client.sendall(data)
    with pytest.raises(TimeoutError):
        client.recv(10)
    proxy.heal()
    client.settimeout(2)
    assert client.recv(10) == data


def test_blackhole_holds_data_and_heal_delivers_it(proxy: TcpProxy) -> None:
    with _client(proxy, timeout_s=0.5) as client:
        client.sendall(b"a")
        assert client.recv(10) == b"a"
        proxy.blackhole()
        assert_held_until_healed(proxy, client, b"held")


def test_new_connections_on_a_dark_path_get_no_answer(proxy: TcpProxy) -> None:
    proxy.blackhole()
    with _client(proxy, timeout_s=0.5) as client:
        assert_held_until_healed(proxy, client, b"x")


def test_delay_adds_latency_each_way(proxy: TcpProxy) -> None:
    proxy.delay(0.3)
    with _client(proxy) as client:
        started = time.monotonic()
        client.sendall(b"slow")
        assert client.recv(10) == b"slow"
        assert time.monotonic() - started >= 0.6


def test_reset_closes_current_connections_and_accepts_new_ones(proxy: TcpProxy) -> None:
    with _client(proxy) as client:
        client.sendall(b"1")
        assert client.recv(10) == b"1"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            client.sendall(b"2")
            client.recv(10)  # b"" would mean a clean FIN, not a reset
            raise AssertionError("connection was closed without a reset")
    with _client(proxy) as client:
        client.sendall(b"3")
        assert client.recv(10) == b"3"
