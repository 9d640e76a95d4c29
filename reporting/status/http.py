"""The instance's HTTP endpoints: /status (JSON), /healthz and /metrics (Prometheus text).

A connection costs a thread only once its whole request head has arrived: until then one
selector thread reads it, and closes it if the head is not complete within REQUEST_TIMEOUT_S,
is larger than MAX_HEAD_BYTES, or is the longest waiting of more than MAX_WAITING. The answer
is written by one of WORKERS threads, within REPLY_TIMEOUT_S. So idle, slow or many clients can
hold neither the threads nor the answers of /healthz.
"""

import io
import json
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

# Threads writing answers: one takes milliseconds, so a few suffice.
WORKERS = 4
# From connecting to the end of the request head.
REQUEST_TIMEOUT_S = 10.0
# Writing the answer, to a client that may not read it.
REPLY_TIMEOUT_S = 5.0
MAX_HEAD_BYTES = 16384
# Connections whose request head is not complete yet; beyond this the longest waiting is closed.
MAX_WAITING = 1024


@dataclass
class _Waiting:
    since: float
    address: Any
    head: bytearray = field(default_factory=bytearray)


class _Server(HTTPServer):
    """An HTTPServer that reads request heads in one selector thread and answers complete ones
    on a bounded pool of threads."""

    request_queue_size = 1024  # a burst of connects does not overflow the listen backlog

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        # Everything server_close() ends is made before the bind: a bind that fails (the port
        # taken) calls server_close() inside HTTPServer's __init__ and then raises its OSError.
        self._selector = selectors.DefaultSelector()
        self._waiting: OrderedDict[socket.socket, _Waiting] = OrderedDict()
        self._heads: dict[socket.socket, bytes] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._closed = False
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="http")
        self._reader = threading.Thread(target=self._read_loop, name="http-heads", daemon=True)
        super().__init__(address, handler)
        self._reader.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            if self._closed:
                self.shutdown_request(request)
                return
            if len(self._waiting) >= MAX_WAITING:
                self._drop(next(iter(self._waiting)))
            request.setblocking(False)
            self._waiting[request] = _Waiting(time.monotonic(), client_address)
            self._selector.register(request, selectors.EVENT_READ)
        self._wake_w.send(b"x")  # the reader's select() picks up the new socket

    def take_head(self, request: socket.socket) -> bytes:
        with self._lock:
            return self._heads.pop(request, b"")

    def _drop(self, sock: socket.socket) -> None:
        del self._waiting[sock]
        self._selector.unregister(sock)
        self.shutdown_request(sock)

    def _read_loop(self) -> None:
        while True:
            events = self._selector.select(timeout=0.5)
            with self._lock:
                if self._closed:
                    return
                for key, _ in events:
                    if key.fileobj is self._wake_r:
                        self._wake_r.recv(4096)
                    elif key.fileobj in self._waiting:  # else dropped while select() returned
                        try:
                            self._read(key.fileobj)
                        except Exception:  # one client's trouble must not end this thread
                            log.warning("http: reading a request failed", exc_info=True)
                            if key.fileobj in self._waiting:
                                self._drop(key.fileobj)
                expired = time.monotonic() - REQUEST_TIMEOUT_S
                while self._waiting and next(iter(self._waiting.values())).since < expired:
                    self._drop(next(iter(self._waiting)))

    def _read(self, sock: socket.socket) -> None:
        waiting = self._waiting[sock]
        try:
            data = sock.recv(MAX_HEAD_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        waiting.head += data
        if not data or len(waiting.head) > MAX_HEAD_BYTES:
            self._drop(sock)
        elif b"\r\n\r\n" in waiting.head or b"\n\n" in waiting.head:
            del self._waiting[sock]
            self._selector.unregister(sock)
            sock.setblocking(True)
            sock.settimeout(REPLY_TIMEOUT_S)
            self._heads[sock] = bytes(waiting.head)
            self._pool.submit(self._answer, sock, waiting.address)

    def _answer(self, sock: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(sock, client_address)
        except Exception:
            self.handle_error(sock, client_address)
        finally:
            self.take_head(sock)
            self.shutdown_request(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Reads and writes that fail are the client's business and handled on the way; what
        # arrives here is an error in answering (a /status that raised).
        log.warning("http: request from %s failed", client_address, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        with self._lock:
            self._closed = True
            for sock in list(self._waiting):
                self._drop(sock)
        self._wake_w.send(b"x")
        if self._reader.ident is not None:  # started: the bind succeeded
            self._reader.join()
        self._pool.shutdown(wait=True)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        status: Callable[[], dict[str, Any]],
        registry: CollectorRegistry,
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                super().setup()
                # The head was read already, by the server's reader thread.
                self.rfile.close()
                self.rfile = io.BytesIO(self.server.take_head(self.request))

            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                path = self.path.split("?", 1)[0]
                if path == "/status":
                    outer._reply(self, 200, "application/json", json.dumps(status()).encode())
                elif path == "/healthz":
                    outer._reply(self, 200, "text/plain", b"ok\n")
                elif path == "/metrics":
                    outer._reply(self, 200, CONTENT_TYPE_LATEST, generate_latest(registry))
                else:
                    outer._reply(self, 404, "text/plain", b"not found\n")

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        self._httpd = _Server((host, port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, code: int, ctype: str, body: bytes) -> None:
        try:
            handler.send_response(code)
            handler.send_header("Content-Type", ctype)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client gave up waiting, or does not read; nothing to tell it

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
