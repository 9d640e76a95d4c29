"""TcpProxy: a TCP hop between a client and a server whose path tests can break.

Faults model the network, not the server: blackhole() is a dark path (connections stay open,
nothing arrives either way, as when a switch drops every packet), delay() adds latency, reset()
tears every current connection down with a TCP RST, heal() restores normal forwarding.
"""

import logging
import queue
import socket
import threading
import time

from reporting.errors import HarnessError
from reporting.harness.ports import LOOPBACK

log = logging.getLogger(__name__)

_CHUNK = 65536
_EOF = b""


class _Path:
    """The fault state shared by every connection of one proxy."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.dark = False
        self.delay_s = 0.0

    def wait_lit(self, closed: threading.Event) -> None:
        """Block while the path is dark."""
        with self.cond:
            while self.dark and not closed.is_set():
                self.cond.wait(0.2)


class _Connection:
    """One client connection and its upstream twin; two pumps per direction."""

    def __init__(self, client: socket.socket, upstream: socket.socket, path: _Path) -> None:
        self.client = client
        self.upstream = upstream
        self.path = path
        self.closed = threading.Event()

    def run(self) -> None:
        for src, dst in ((self.client, self.upstream), (self.upstream, self.client)):
            chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()
            threading.Thread(target=self._read, args=(src, chunks), daemon=True).start()
            threading.Thread(target=self._write, args=(dst, chunks), daemon=True).start()

    def _read(self, src: socket.socket, chunks: "queue.Queue[tuple[float, bytes]]") -> None:
        try:
            while not self.closed.is_set():
                # Not reading while dark lets the kernel buffers fill, as on a dead link.
                self.path.wait_lit(self.closed)
                data = src.recv(_CHUNK)
                chunks.put((time.monotonic(), data))
                if not data:
                    return
        except OSError:
            chunks.put((time.monotonic(), _EOF))

    def _write(self, dst: socket.socket, chunks: "queue.Queue[tuple[float, bytes]]") -> None:
        try:
            while not self.closed.is_set():
                received_at, data = chunks.get()
                if data == _EOF:
                    break
                while (wait := received_at + self.path.delay_s - time.monotonic()) > 0:
                    time.sleep(min(wait, 0.2))
                self.path.wait_lit(self.closed)
                dst.sendall(data)
        except OSError:
            pass
        self.close()

    def close(self, *, reset: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            try:
                if reset:
                    # Linger 0: close() sends RST instead of FIN. SHUT_RD only wakes our own
                    # blocked reader; SHUT_WR would send a FIN first.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    sock.shutdown(socket.SHUT_RD)
                else:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class TcpProxy:
    """Listen on 127.0.0.1 and forward every connection to target_host:target_port."""

    def __init__(
        self, target_host: str, target_port: int, *, listen_port: int | None = None
    ) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, listen_port or 0))
        self.port: int = self._listener.getsockname()[1]
        self._path = _Path()
        self._connections: list[_Connection] = []
        self._lock = threading.Lock()
        self._accepting: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def host(self) -> str:
        """host:port for a client."""
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> "TcpProxy":
        if self._stopped.is_set():
            raise HarnessError("proxy: stopped proxies cannot start again")
        self._listener.listen(64)
        self._accepting = threading.Thread(target=self._accept, name=f"proxy-{self.port}")
        self._accepting.daemon = True
        self._accepting.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection."""
        self._stopped.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        if self._accepting is not None:
            self._accepting.join(5)
        self.reset()

    def blackhole(self) -> None:
        """Forward nothing either way; connections stay open, new ones are accepted but dark."""
        with self._path.cond:
            self._path.dark = True

    def delay(self, seconds: float) -> None:
        """Deliver every chunk `seconds` after it arrived."""
        self._path.delay_s = seconds

    def heal(self) -> None:
        """Forward normally again; data held while dark is delivered now."""
        with self._path.cond:
            self._path.dark = False
            self._path.delay_s = 0.0
            self._path.cond.notify_all()

    def reset(self) -> None:
        """Tear down every current connection with a TCP RST to both ends."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close(reset=True)

    @property
    def connection_count(self) -> int:
        with self._lock:
            self._connections = [c for c in self._connections if not c.closed.is_set()]
            return len(self._connections)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        # On a dark path the server must not see the connection either.
        self._path.wait_lit(self._stopped)
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError as exc:
            log.info("proxy %s: upstream %s:%s refused: %s", self.port, *self.target, exc)
            client.close()
            return
        connection = _Connection(client, upstream, self._path)
        with self._lock:
            if self._stopped.is_set():
                connection.close()
                return
            self._connections.append(connection)
        connection.run()

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
