"""Readiness probes and small queries in each server's own protocol, over plain sockets.

Shared by the local and the container backends: a server is ready when it answers these, not
when its port merely accepts connections.
"""

import json
import socket
import ssl
import time
import uuid
from pathlib import Path

import psycopg
import pymysql

from reporting.harness.ports import LOOPBACK
from reporting.wire.login import connect_value


class StompSession:
    """A bare STOMP 1.2 connection: enough to probe a broker and ask it for statistics."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float = 2,
        login: tuple[str, str] | None = None,
        ca_file: Path | str | None = None,
    ) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout_s)
        if ca_file is not None:
            context = ssl.create_default_context(cafile=str(ca_file))
            try:
                self._sock = context.wrap_socket(self._sock, server_hostname=host)
            except OSError:
                self._sock.close()
                raise
        self._buffer = b""
        headers = {"accept-version": "1.2", "host": "localhost", "heart-beat": "0,0"}
        if login is not None:
            headers["login"], headers["passcode"] = map(connect_value, login)
        self.send_frame("CONNECT", headers)
        command, _, _ = self.read_frame()
        if command != "CONNECTED":
            self.close()
            raise ConnectionError(f"STOMP server answered {command} to CONNECT")

    def send_frame(self, command: str, headers: dict[str, str], body: bytes = b"") -> None:
        head = "".join(f"{key}:{value}\n" for key, value in headers.items())
        self._sock.sendall(f"{command}\n{head}\n".encode() + body + b"\0")

    def read_frame(self) -> tuple[str, dict[str, str], bytes]:
        while b"\0" not in self._buffer.lstrip(b"\r\n"):
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("STOMP server closed the connection")
            self._buffer += chunk
        self._buffer = self._buffer.lstrip(b"\r\n")  # heart-beats between frames
        frame, _, self._buffer = self._buffer.partition(b"\0")
        head, _, body = frame.partition(b"\n\n")
        command, *lines = head.decode().split("\n")
        headers: dict[str, str] = {}
        for line in lines:
            key, _, value = line.partition(":")
            headers.setdefault(key, value)  # STOMP 1.2: the first of repeated headers wins
        return command, headers, body

    def close(self) -> None:
        try:
            self._sock.sendall(b"DISCONNECT\n\n\0")
        except OSError:
            pass
        self._sock.close()

    def __enter__(self) -> "StompSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stomp_ready(
    port: int,
    host: str = LOOPBACK,
    *,
    login: tuple[str, str] | None = None,
    ca_file: Path | str | None = None,
) -> bool:
    """True when a STOMP CONNECT on host:port (as `login`: user, password; over TLS verified with
    `ca_file`) is answered with CONNECTED."""
    try:
        with StompSession(host, port, login=login, ca_file=ca_file):
            return True
    except (OSError, ConnectionError, ValueError):
        return False


# Makes ActiveMQ's statistics plugin end its list of answers with an empty message.
_END_WITH_EMPTY = "ActiveMQ.Statistics.Destination.List.End.With.Null"


def activemq_queue_depth(port: int, queue: str, host: str = LOOPBACK, timeout_s: float = 10) -> int:
    """Messages on an ActiveMQ queue not yet acknowledged (its statistics "size"); 0 when the
    queue does not exist. Needs <statisticsBrokerPlugin/> in the broker."""
    return activemq_queue_stats(port, queue, host, timeout_s).get("size", 0)


def activemq_queue_stats(
    port: int, queue: str, host: str = LOOPBACK, timeout_s: float = 10
) -> dict[str, int]:
    """The counters of an ActiveMQ queue's statistics: "size" (not yet acknowledged),
    "consumerCount", "inflightCount" (dispatched to a consumer, not yet acknowledged) and the
    rest; empty when the queue does not exist. Needs <statisticsBrokerPlugin/> in the broker."""
    deadline = time.monotonic() + timeout_s
    with StompSession(host, port, timeout_s=timeout_s) as session:
        reply_to = f"/temp-queue/stats-{uuid.uuid4().hex}"
        # The plugin answers with a JMS MapMessage; this header makes the broker render it as JSON.
        session.send_frame(
            "SUBSCRIBE", {"destination": reply_to, "id": "stats", "transformation": "jms-map-json"}
        )
        session.send_frame(
            "SEND",
            {
                "destination": f"/queue/ActiveMQ.Statistics.Destination.{queue}",
                "reply-to": reply_to,
                _END_WITH_EMPTY: "true",
            },
        )
        counters: dict[str, int] = {}
        while time.monotonic() < deadline:
            command, _, body = session.read_frame()
            if command == "ERROR":
                raise ConnectionError(f"broker refused the statistics query: {body[:200]!r}")
            if command != "MESSAGE":
                continue
            stats = _map_message(body)
            if not stats:
                return counters
            if stats.get("destinationName") == f"queue://{queue}":
                for key, value in stats.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        counters[key] = counters.get(key, 0) + int(value)
        raise TimeoutError(f"no statistics for queue {queue} within {timeout_s} s")


def _map_message(body: bytes) -> dict[str, object]:
    """Flatten ActiveMQ's jms-map-json rendering: {"map": {"entry": [{"string": key, T: v}]}}."""
    entries = json.loads(body).get("map") or {}
    if isinstance(entries, dict):
        entries = entries.get("entry", [])
    flat: dict[str, object] = {}
    for entry in entries:
        if isinstance(entry.get("string"), list):  # a string value: ["key", "value"]
            key, value = entry["string"]
        else:
            key = entry["string"]
            value = next(v for k, v in entry.items() if k != "string")
        flat[key] = value
    return flat


def zookeeper_command(port: int, command: str, host: str = LOOPBACK, timeout_s: float = 2) -> str:
    """Send a four-letter word (ruok, srvr, mntr) and return the whole answer."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(command.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def zookeeper_ready(port: int, host: str = LOOPBACK) -> bool:
    """True when ZooKeeper answers ruok with imok and srvr shows it serving."""
    try:
        return zookeeper_command(port, "ruok", host) == "imok" and "Mode:" in zookeeper_command(
            port, "srvr", host
        )
    except OSError:
        return False


def postgres_ready(port: int, host: str = LOOPBACK, *, password: str | None = None) -> bool:
    """True when PostgreSQL accepts a connection (as postgres) and runs a query."""
    try:
        with psycopg.connect(
            host=host,
            port=port,
            user="postgres",
            password=password,
            dbname="postgres",
            connect_timeout=2,
        ) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def mariadb_ready(port: int, host: str = LOOPBACK) -> bool:
    """True when MariaDB accepts a connection (as root) and runs a query."""
    try:
        with pymysql.connect(host=host, port=port, user="root", connect_timeout=2) as conn:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
        return True
    except pymysql.Error:
        return False
