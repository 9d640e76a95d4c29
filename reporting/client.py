"""The reporting client: sends reports to the broker with receipts, failing over between brokers.

A report counts as sent only when the broker's RECEIPT for its SEND has arrived: the broker has
then stored it (persistent:true). Until then it stays unconfirmed; when the connection fails
(disconnect, heartbeat loss, a receipt that does not come in time) the client connects to the next
broker of its host list and sends every unconfirmed report again, with the same report-id, so the
server's idempotency on report-id turns the retry into exactly-once storage. Confirmed ids are
appended to the ledger only after their receipt.

The host list is in priority order (the primary's broker first). After a failover the client
returns to the first host once it answers again (`failback_s`), so that nothing keeps flowing into
a backup broker that is about to stand down.

This module runs past 400 lines because connecting, failing over, failing back and resending all
work on one table of unconfirmed reports under one lock; split up, that state would be shared
across files.
"""

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stomp
import stomp.exception

from reporting.errors import BrokerError
from reporting.ledger import Ledger
from reporting.wire import tls
from storage.reports import DEFAULT_QUEUES, KINDS, QUEUE_PREFIX, kind_of

log = logging.getLogger(__name__)


def destination_for(kind: str) -> str:
    """The contract's destination for a kind of report."""
    return f"/queue/{QUEUE_PREFIX}{kind}"


def queues_by_kind(queues: Iterable[str]) -> dict[str, str]:
    """Kind -> queue name, the kind being a name's last part (as in site1.gvp.reporting.cdr)."""
    routes: dict[str, str] = {}
    for queue in queues:
        kind = kind_of(queue)
        if kind not in KINDS:
            raise BrokerError(f"queue {queue!r} does not end in .<{'|'.join(KINDS)}>")
        routes.setdefault(kind, queue)
    return routes


def parse_host(host: str) -> tuple[str, int]:
    name, _, port = host.rpartition(":")
    if not name or not port.isdigit():
        raise BrokerError(f"broker address {host!r} is not host:port")
    return name, int(port)


@dataclass
class _Pending:
    seq: int
    report_id: str
    destination: str
    body: bytes
    headers: dict[str, str]
    ledger: bool
    sent_at: float = 0.0
    sends: int = 0


@dataclass
class ClientStats:
    sent: int = 0  # SEND frames written, resends included
    confirmed: int = 0
    resent: int = 0
    failovers: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (report_id, broker's message)


class _Listener(stomp.ConnectionListener):
    """Hands one connection's frames to the client; events of an older connection are ignored."""

    def __init__(self, client: "ReportClient", generation: int) -> None:
        self.client = client
        self.generation = generation

    def on_connected(self, frame: Any) -> None:
        self.client._on_connected(self.generation)

    def on_receipt(self, frame: Any) -> None:
        self.client._on_receipt(frame.headers.get("receipt-id", ""))

    def on_error(self, frame: Any) -> None:
        self.client._on_error(self.generation, frame.headers, frame.body)

    def on_disconnected(self) -> None:
        self.client._on_broken(self.generation, "connection lost")

    def on_heartbeat_timeout(self) -> None:
        self.client._on_broken(self.generation, "heartbeat timeout")


class ReportClient:
    """Sends reports with receipts through a priority-ordered list of STOMP brokers.

    `queues` names the queue of each kind (by its last part; the contract's names by default).
    `in_flight` is how many reports may still be unconfirmed when `send` returns: 0 makes every
    send wait for its own receipt; more lets sends overlap their receipts (much faster), and
    `flush` or `close` waits for the rest. With `ca_file` every host is spoken to over TLS and
    its certificate verified against that file's CAs. Not thread-safe: one thread sends.
    """

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        user: str | None = None,
        password: str | None = None,
        receipt_timeout_s: float = 5.0,
        ledger: Path | str | None = None,
        in_flight: int = 0,
        queues: Iterable[str] = DEFAULT_QUEUES,
        heartbeat_ms: int = 2000,
        connect_timeout_s: float = 5.0,
        reconnect_timeout_s: float = 60.0,
        failback_s: float = 10.0,
        ca_file: Path | str | None = None,
    ) -> None:
        if not hosts:
            raise BrokerError("no broker hosts given")
        self.hosts = [parse_host(h) for h in hosts]
        self.queues = queues_by_kind(queues)
        self.user = user
        self._password = password
        self.receipt_timeout_s = receipt_timeout_s
        self.in_flight = max(0, in_flight)
        self.heartbeat_ms = heartbeat_ms
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self.failback_s = failback_s
        self.ca_file = ca_file
        self.stats = ClientStats()
        # Ids confirmed for sends made with ledger=False (deliberately bad messages, say).
        self.confirmed_unledgered: list[str] = []
        self._ledger = Ledger(ledger) if ledger is not None else None
        self._cond = threading.Condition()
        self._pending: dict[int, _Pending] = {}
        self._confirmed: list[_Pending] = []
        self._seq = 0
        self._conn: stomp.Connection12 | None = None
        self._generation = 0
        self._connected_generation = -1
        self._broken: str | None = None
        self._connect_error: str | None = None
        self._host_index = 0
        self._connected_at = 0.0
        self._closed = False

    @property
    def current_host(self) -> str | None:
        if self._conn is None:
            return None
        host, port = self.hosts[self._host_index]
        return f"{host}:{port}"

    @property
    def unconfirmed(self) -> int:
        with self._cond:
            return len(self._pending)

    def send(self, kind: str, report: dict[str, Any], *, report_id: str | None = None) -> str:
        """Sends one report to its kind's queue; returns its report-id."""
        if kind not in self.queues:
            raise ValueError(f"no queue for reports of kind {kind!r}: {sorted(self.queues)}")
        body = json.dumps(report, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        report_id = report_id or f"{kind}-{uuid.uuid4().hex}"
        return self.send_raw(f"/queue/{self.queues[kind]}", body, report_id=report_id)

    def send_raw(
        self,
        destination: str,
        body: bytes,
        *,
        report_id: str | None,
        headers: dict[str, str] | None = None,
        ledger: bool = True,
    ) -> str:
        """Sends any body to any destination; without a report_id the broker's message-id stands
        in. With ledger=False its confirmed id goes to `confirmed_unledgered`, not the ledger."""
        if self._closed:
            raise BrokerError("the reporting client is closed")
        if self._conn is None:
            self._connect(0)
        elif self._broken is not None:
            self._fail_over(self._broken)
        elif self._host_index != 0 and time.monotonic() - self._connected_at >= self.failback_s:
            self._fail_back()
        self._seq += 1
        frame_headers = dict(headers or {})
        frame_headers["persistent"] = "true"
        frame_headers["receipt"] = f"r{self._seq}"
        if report_id is not None:
            frame_headers["report-id"] = report_id
        pending = _Pending(self._seq, report_id or "", destination, body, frame_headers, ledger)
        with self._cond:
            self._pending[pending.seq] = pending
        self._transmit(pending)
        self._wait_until(lambda: len(self._pending) <= self.in_flight)
        return report_id or ""

    def flush(self) -> None:
        """Waits until every report sent so far is confirmed (resending as needed)."""
        self._wait_until(lambda: not self._pending)

    def close(self) -> None:
        """Flushes, then disconnects; the ledger is closed too."""
        if self._closed:
            return
        try:
            if self._conn is not None:
                self.flush()
        finally:
            self._closed = True
            self._drop_connection(polite=True)
            if self._ledger is not None:
                self._ledger.close()

    def __enter__(self) -> "ReportClient":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # don't wait for receipts on the way out of an error
            self._closed = True
            self._drop_connection(polite=False)
            if self._ledger is not None:
                self._ledger.close()

    # -- the stomp.py thread's side ------------------------------------------------------------

    def _on_connected(self, generation: int) -> None:
        with self._cond:
            if generation == self._generation:
                self._connected_generation = generation
                self._cond.notify_all()

    def _on_receipt(self, receipt_id: str) -> None:
        if not receipt_id.startswith("r") or not receipt_id[1:].isdigit():
            return
        with self._cond:
            pending = self._pending.pop(int(receipt_id[1:]), None)
            if pending is not None:
                self._confirmed.append(pending)
                self._cond.notify_all()

    def _on_error(self, generation: int, headers: dict[str, str], body: Any) -> None:
        message = headers.get("message", "")
        receipt_id = headers.get("receipt-id", "")
        log.warning("broker error: %s", message or "(no message)")
        with self._cond:
            if generation != self._generation:
                return
            if receipt_id.startswith("r") and receipt_id[1:].isdigit():
                # The broker refused this very SEND: sending it again would be refused again.
                pending = self._pending.pop(int(receipt_id[1:]), None)
                if pending is not None:
                    self.stats.refused.append((pending.report_id, message))
            if self._connected_generation != generation:
                self._connect_error = message or "broker refused the connection"
            self._cond.notify_all()

    def _on_broken(self, generation: int, reason: str) -> None:
        with self._cond:
            if generation == self._generation and self._broken is None:
                self._broken = reason
                self._cond.notify_all()

    # -- the sending thread's side -------------------------------------------------------------

    def _transmit(self, pending: _Pending) -> None:
        conn = self._conn
        pending.sent_at = time.monotonic()
        pending.sends += 1
        self.stats.sent += 1
        if pending.sends > 1:
            self.stats.resent += 1
        try:
            if conn is None:
                raise stomp.exception.NotConnectedException()
            conn.send(pending.destination, pending.body, headers=dict(pending.headers))
        except (stomp.exception.StompException, OSError) as exc:
            # The wait that follows sees the broken connection and fails over.
            self._on_broken(self._generation, f"send failed: {exc!r}")

    def _wait_until(self, done: Callable[[], bool]) -> None:
        while True:
            with self._cond:
                while not done() and self._broken is None:
                    oldest = min((p.sent_at for p in self._pending.values()), default=None)
                    if oldest is None:
                        self._cond.wait()
                        continue
                    left = oldest + self.receipt_timeout_s - time.monotonic()
                    if left <= 0:
                        self._broken = f"no receipt within {self.receipt_timeout_s} s"
                        break
                    self._cond.wait(left)
                finished = done()
                broken = self._broken
                unconfirmed = bool(self._pending)
                confirmed, self._confirmed = self._confirmed, []
            self._record(confirmed)
            if broken is not None and unconfirmed:
                self._fail_over(broken)
            elif finished:
                # A broken connection with nothing in flight is replaced at the next send.
                return

    def _record(self, confirmed: list[_Pending]) -> None:
        if not confirmed:
            return
        self.stats.confirmed += len(confirmed)
        ids = [p.report_id for p in confirmed if p.ledger and p.report_id]
        self.confirmed_unledgered.extend(p.report_id for p in confirmed if not p.ledger)
        if self._ledger is not None:
            self._ledger.append(ids)

    def _fail_over(self, reason: str) -> None:
        failed = self.current_host
        log.warning("broker %s: %s; failing over", failed, reason)
        self.stats.failovers += 1
        self._drop_connection(polite=False)
        # Start with the next host, so a broker that hangs is tried last, not first again.
        self._connect((self._host_index + 1) % len(self.hosts))
        with self._cond:
            resend = sorted(self._pending.values(), key=lambda p: p.seq)
        if resend:
            log.info("resending %d unconfirmed reports to %s", len(resend), self.current_host)
        for pending in resend:
            self._transmit(pending)

    def _fail_back(self) -> None:
        """Moves back to the first host if it answers; only with nothing in flight."""
        self.flush()
        if self._host_index == 0:  # the flush may itself have failed over
            return
        current, index = self._conn, self._host_index
        generation, broken = self._generation, self._broken
        if self._try_host(0):
            log.info("broker %s answers again; failing back to it", self.current_host)
            self._close_connection(current, polite=True)
            return
        # Stay where we are and ask the first host again later.
        with self._cond:
            self._conn, self._host_index = current, index
            self._generation, self._broken = generation, broken
            if current is None or not current.is_connected():
                self._broken = broken or "connection lost"
        self._connected_at = time.monotonic()

    def _connect(self, start: int) -> None:
        deadline = time.monotonic() + self.reconnect_timeout_s
        delay = 0.1
        while True:
            for step in range(len(self.hosts)):
                if self._try_host((start + step) % len(self.hosts)):
                    return
            if time.monotonic() >= deadline:
                names = ", ".join(f"{h}:{p}" for h, p in self.hosts)
                raise BrokerError(
                    f"no broker answered within {self.reconnect_timeout_s} s: {names}"
                )
            # A pause between rounds of the host list, so a broker that is restarting is not
            # hammered; it is not waiting for anything in particular.
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)

    def _try_host(self, index: int) -> bool:
        host, port = self.hosts[index]
        conn = stomp.Connection12(
            [(host, port)],
            prefer_localhost=False,
            try_loopback_connect=False,
            reconnect_attempts_max=1,
            reconnect_sleep_initial=0.0,
            heartbeats=(self.heartbeat_ms, self.heartbeat_ms),
            auto_decode=False,
        )
        if self.ca_file is not None:
            tls.use_tls(conn, host, port, self.ca_file)
        with self._cond:
            self._generation += 1
            generation = self._generation
            self._broken = None
            self._connect_error = None
        conn.set_listener("report-client", _Listener(self, generation))
        try:
            conn.connect(self.user, self._password, wait=False)
        except (stomp.exception.StompException, OSError) as exc:
            log.info("broker %s:%d does not answer: %s", host, port, exc or type(exc).__name__)
            self._close_connection(conn, polite=False)
            return False
        with self._cond:
            answered = self._cond.wait_for(
                lambda: (
                    self._connected_generation == generation
                    or self._broken is not None
                    or self._connect_error is not None
                ),
                timeout=self.connect_timeout_s,
            )
            ok = answered and self._connected_generation == generation and self._broken is None
            problem = self._connect_error or self._broken or "no CONNECTED frame in time"
        if not ok:
            log.info("broker %s:%d refused the connection: %s", host, port, problem)
            self._close_connection(conn, polite=False)
            return False
        self._conn = conn
        self._host_index = index
        self._connected_at = time.monotonic()
        log.info("connected to broker %s:%d", host, port)
        return True

    def _drop_connection(self, *, polite: bool) -> None:
        conn, self._conn = self._conn, None
        with self._cond:
            self._generation += 1  # whatever the old connection reports now is stale
        if conn is not None:
            self._close_connection(conn, polite=polite)

    def _close_connection(self, conn: stomp.Connection12, *, polite: bool) -> None:
        conn.remove_listener("report-client")
        transport = conn.transport
        if polite and conn.is_connected():
            # The broker answers DISCONNECT with a receipt once it has handled every frame before
            # it. Bounded wait: a hung broker must not hang close().
            bye = _ByeListener(f"bye-{uuid.uuid4().hex}")
            conn.set_listener("report-client-bye", bye)
            try:
                conn.send_frame("DISCONNECT", {"receipt": bye.receipt_id})
                bye.done.wait(self.receipt_timeout_s)
            except (stomp.exception.StompException, OSError):
                pass
            conn.remove_listener("report-client-bye")
        try:
            transport.disconnect_socket()
        except (stomp.exception.StompException, OSError):
            pass
        io_thread = getattr(transport, "io_thread", None)
        if io_thread is not None and io_thread is not threading.current_thread():
            io_thread.join(timeout=5.0)


class _ByeListener(stomp.ConnectionListener):
    def __init__(self, receipt_id: str) -> None:
        self.receipt_id = receipt_id
        self.done = threading.Event()

    def on_receipt(self, frame: Any) -> None:
        if frame.headers.get("receipt-id") == self.receipt_id:
            self.done.set()

    def on_disconnected(self) -> None:
        self.done.set()
