"""The reporting client: sends reports to the broker with receipts, failing over between brokers.

A report counts as sent only when the broker's RECEIPT for its SEND has arrived: the broker has
then stored it (persistent:true). Until then it stays unconfirmed; when the connection fails
(disconnect, heartbeat loss, a receipt that does not come in time) the client connects to the next
broker of its host list and sends every unconfirmed report again, with the same report-id, so the
server's idempotency on report-id turns the retry into exactly-once storage. Confirmed ids are
appended to the ledger only after their receipt.

The host list is in priority order (the primary's broker first). After a failover the client
returns to the first host once it answers again (`failback_s`), so that nothing keeps flowing into
a backup broker that is about to stand down. Connecting, TLS and closing are wire/connection.py's.
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

from reporting.config import HostPort
from reporting.errors import BrokerError, BrokerUnreachable
from reporting.ledger import Ledger
from reporting.wire.connection import Connection, Listener, failover
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


def _host(host: str | HostPort) -> HostPort:
    if isinstance(host, HostPort):
        return host
    try:
        return HostPort.parse(host)
    except ValueError:
        raise BrokerError(f"broker address {host!r} is not host:port") from None


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


class _Listener(Listener):
    """Hands each connection's frames to the client; events of an older connection are ignored."""

    def __init__(self, client: "ReportClient") -> None:
        self.client = client

    def on_receipt(self, conn: Connection, frame: stomp.utils.Frame) -> None:
        self.client._on_receipt(frame.headers.get("receipt-id", ""))

    def on_error(self, conn: Connection, frame: stomp.utils.Frame) -> None:
        self.client._on_error(conn.generation, frame.headers)

    def on_lost(self, conn: Connection, reason: str) -> None:
        self.client._on_broken(conn.generation, reason)


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
        hosts: Sequence[str | HostPort],
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
        self.hosts = [_host(h) for h in hosts]
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
        self._conn: Connection | None = None
        self._generation = 0
        self._broken: str | None = None
        self._host_index = 0
        self._connected_at = 0.0
        self._closed = False

    @property
    def current_host(self) -> str | None:
        if self._conn is None:
            return None
        return str(self.hosts[self._host_index])

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

    def _on_receipt(self, receipt_id: str) -> None:
        if not receipt_id.startswith("r") or not receipt_id[1:].isdigit():
            return
        with self._cond:
            pending = self._pending.pop(int(receipt_id[1:]), None)
            if pending is not None:
                self._confirmed.append(pending)
                self._cond.notify_all()

    def _on_error(self, generation: int, headers: dict[str, str]) -> None:
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
                raise BrokerUnreachable("-", "not connected")
            conn.send(pending.destination, pending.body, headers=dict(pending.headers))
        except BrokerUnreachable as exc:
            # The wait that follows sees the broken connection and fails over.
            self._on_broken(self._generation, f"send failed: {exc.reason}")

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
            if current is not None:
                current.close(polite=True)
            return
        # Stay where we are and ask the first host again later.
        with self._cond:
            self._conn, self._host_index = current, index
            self._generation, self._broken = generation, broken
            if current is None or not current.alive:
                self._broken = broken or "connection lost"
        self._connected_at = time.monotonic()

    def _connect(self, start: int) -> None:
        # Raises BrokerUnreachable (a BrokerError) once reconnect_timeout_s has passed.
        failover(
            self.hosts,
            self._try_host,
            first=start,
            give_up_s=self.reconnect_timeout_s,
            max_pause_s=2.0,
        )

    def _try_host(self, index: int) -> bool | None:
        """True once connected to hosts[index]; None when it does not answer or refuses."""
        host = self.hosts[index]
        with self._cond:
            self._generation += 1
            generation = self._generation
            self._broken = None
        conn = Connection(
            host,
            generation=generation,
            listener=_Listener(self),
            user=self.user,
            password=self._password,
            ca_file=self.ca_file,
            heartbeat_ms=self.heartbeat_ms,
            timeout_s=self.connect_timeout_s,
        )
        try:
            conn.open()
        except BrokerError as exc:
            log.info("broker %s refused the connection or does not answer: %s", host, exc)
            conn.close()
            return None
        self._conn = conn
        self._host_index = index
        self._connected_at = time.monotonic()
        log.info("connected to broker %s", host)
        return True

    def _drop_connection(self, *, polite: bool) -> None:
        conn, self._conn = self._conn, None
        with self._cond:
            self._generation += 1  # whatever the old connection reports now is stale
        if conn is not None:
            conn.close(polite=polite)
