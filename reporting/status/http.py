"""The instance's HTTP endpoints: /status (JSON), /healthz and /metrics (Prometheus text)."""

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


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

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
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
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting; nothing to tell it

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
