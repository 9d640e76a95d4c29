"""The STOMP consumer: subscribe with `ack: client`, batch, hand each batch over, then ack.

The consumer never acks a message before its batch handler has returned True, which the
pipeline does only after the journal fsync. ActiveMQ's `client` ack is cumulative per
subscription, so one ACK of the last message of each subscription in a batch settles it.

A batch whose connection was lost before its ack is dropped: the broker redelivers those messages
to the next consumer, and the database's unique `report_id` absorbs any that were journalled twice.

A broker that refuses the login or a subscription (wrong credentials or rights), or whose TLS
certificate fails verification against [broker] ca_file, is not retried: that is a configuration to
fix, not an outage to wait out. The consumer logs one line, stops and calls `on_refused`.
"""

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import stomp
import stomp.exception

from reporting.config import BrokerConfig, HostPort
from reporting.errors import BrokerError, BrokerRefused, BrokerUntrusted
from reporting.wire import headers, tls

log = logging.getLogger(__name__)

# ERROR messages that mean "these credentials or rights are wrong", of ActiveMQ Classic
# ("User name [x] or password is invalid.", "User x is not authorized to read from: ...") and
# Artemis (AMQ229031 "Unable to validate user", AMQ229032 "does not have permission").
_REFUSAL = re.compile(
    r"password is invalid|not authori[sz]ed|unable to validate user|does not have permission"
    r"|authentication failed|AMQ22903[12]",
    re.IGNORECASE,
)


# How long the broker may take to confirm the subscriptions of a new connection.
SUBSCRIBE_TIMEOUT_S = 5.0


def is_refusal(message: str) -> bool:
    """True if a broker's ERROR message refuses the credentials or the rights of the client."""
    return _REFUSAL.search(message) is not None


@dataclass(frozen=True, slots=True)
class Message:
    """One MESSAGE frame as received: where it came from, its headers and its raw body."""

    destination: str
    headers: dict[str, str]
    body: bytes
    generation: int


# Returns True when the batch is durable and may be acked; False to abandon it unacked.
BatchHandler = Callable[[Sequence[Message]], bool]


class _Listener(stomp.ConnectionListener):
    def __init__(self, consumer: "Consumer", generation: int) -> None:
        self.consumer = consumer
        self.generation = generation
        # Set when the broker has answered the last SUBSCRIBE (or refused, or hung up).
        self.answered = threading.Event()
        self.subscribed = False
        self.receipt = f"subscribed-{generation}"

    def on_receipt(self, frame: stomp.utils.Frame) -> None:
        if frame.headers.get("receipt-id") == self.receipt:
            self.subscribed = True
            self.answered.set()

    def on_message(self, frame: stomp.utils.Frame) -> None:
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        headers = dict(frame.headers)
        self.consumer._inbox.put(
            Message(headers.get("destination", ""), headers, body, self.generation)
        )

    def on_error(self, frame: stomp.utils.Frame) -> None:
        message = str(frame.headers.get("message", "(no message)"))
        if is_refusal(message):
            self.consumer._refuse(message, self.generation)
        else:
            log.warning("broker error: %s", message)
        self.answered.set()

    def on_disconnected(self) -> None:
        self.answered.set()
        self.consumer._on_disconnected(self.generation)

    def on_heartbeat_timeout(self) -> None:
        log.warning("broker heartbeat timed out")
        self.consumer._on_disconnected(self.generation)


class _LoginListener(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.answered = threading.Event()
        self.connected = False
        self.error: str | None = None

    def on_connected(self, frame: stomp.utils.Frame) -> None:
        self.connected = True
        self.answered.set()

    def on_error(self, frame: stomp.utils.Frame) -> None:
        self.error = str(frame.headers.get("message", "(no message)"))
        self.answered.set()

    def on_disconnected(self) -> None:
        self.answered.set()


def check_login(config: BrokerConfig, *, timeout_s: float = 5.0) -> bool:
    """Logs in to the first broker of the host list that answers, and out again.

    Raises BrokerRefused if that broker refuses the credentials, BrokerUntrusted if its TLS
    certificate fails verification; returns False if no broker answered (not an error at start-up:
    the consumer waits for one), True if the login worked.
    """
    for host_port in config.hosts:
        host, port = host_port.host, host_port.port
        if config.tls and config.ca_file is not None:
            try:
                reason = tls.untrusted(host, port, config.ca_file, timeout_s=timeout_s)
            except OSError:
                continue
            if reason is not None:
                raise BrokerUntrusted(str(host_port), str(config.ca_file), reason)
        listener = _LoginListener()
        conn = stomp.Connection12(
            [(host, port)], reconnect_attempts_max=1, timeout=timeout_s, auto_decode=False
        )
        if config.tls and config.ca_file is not None:
            tls.use_tls(conn, host, port, config.ca_file)
        conn.set_listener("login", listener)
        try:
            conn.connect(config.user, config.password, wait=False)
            listener.answered.wait(timeout_s)
        except (stomp.exception.StompException, OSError):
            continue
        finally:
            try:
                conn.transport.disconnect_socket()
            except Exception:  # already closed by the broker
                log.debug("closing login check connection", exc_info=True)
        if listener.error is not None and is_refusal(listener.error):
            raise BrokerRefused(str(host_port), config.user, listener.error)
        if listener.connected:
            return True
    return False


class Consumer:
    """Consumes the configured queues of one broker host list in a thread of its own."""

    def __init__(
        self,
        config: BrokerConfig,
        handler: BatchHandler,
        *,
        name: str,
        on_refused: Callable[[BrokerError], None] | None = None,
    ) -> None:
        headers.install()
        self.config = config
        self.handler = handler
        self.name = name
        # Called once, from a consumer or receiver thread, when the broker refuses us (or we it).
        self.on_refused = on_refused
        self.refused: BrokerError | None = None
        self._host_of: dict[int, str] = {}
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._generation = 0
        self._conn: stomp.Connection12 | None = None
        # Held while a batch is handed over and acked, and by stop(): once stop() has the lock,
        # no further ack can leave this process.
        self._ack_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._busy = False
        self.connected_host: str | None = None

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.is_connected() and not self._lost.is_set()

    def start(self) -> None:
        self.refused = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-consumer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops at once: no ack after this returns; unacked messages go back to the broker."""
        self._stop.set()
        with self._ack_lock:
            self._drop_connection()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        self._thread = None

    def idle_for(self, seconds: float, *, timeout_s: float = 60.0) -> bool:
        """True once connected with no message for `seconds` (the broker is drained); False when
        stopped or when that did not happen within `timeout_s` (e.g. the broker is down)."""
        give_up = time.monotonic() + timeout_s
        quiet_since: float | None = None
        while time.monotonic() < give_up:
            if self.connected and self._inbox.empty() and not self._busy:
                now = time.monotonic()
                quiet_since = quiet_since or now
                if now - quiet_since >= seconds:
                    return True
            else:
                quiet_since = None
            if self._stop.wait(0.05):
                return False
        return False

    def _on_disconnected(self, generation: int) -> None:
        if generation == self._generation:
            self._lost.set()

    def _refuse(self, reason: str, generation: int) -> None:
        # The consumer thread sees _stop and drops the connection itself; nothing is acked after.
        refused = BrokerRefused(self._host_of.get(generation, "?"), self.config.user, reason)
        self._give_up(refused, "fix [broker] user/password or the rights")

    def _give_up(self, error: BrokerError, fix: str) -> None:
        if self.refused is not None or self._stop.is_set():
            return
        self.refused = error
        self._stop.set()
        self._lost.set()
        log.error("%s: %s; not retrying: %s", self.name, error, fix)
        if self.on_refused is not None:
            self.on_refused(error)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._generation += 1
        self.connected_host = None
        if conn is None:
            return
        try:
            # No DISCONNECT frame: it could wait on a dark path. Closing the socket is enough for
            # the broker to hand every unacked message to the next consumer.
            # transport.stop() only waits for the receiver thread; disconnect_socket() ends it.
            conn.transport.disconnect_socket()
        except Exception:  # the transport may already be gone; nothing to release then
            log.debug("closing broker connection", exc_info=True)

    def _connect(self) -> bool:
        """Tries each broker host in order, with growing pauses; False when stopping."""
        pause_s = 0.1
        while not self._stop.is_set():
            for host in self.config.hosts:
                if self._stop.is_set():
                    return False
                if self._connect_to(host):
                    return True
            self._stop.wait(pause_s)
            pause_s = min(pause_s * 2, 5.0)
        return False

    def _connect_to(self, host_port: HostPort) -> bool:
        host, port = host_port.host, host_port.port
        if not self._trusted(host_port):
            return False
        hb = self.config.heartbeat_ms
        conn = stomp.Connection12(
            [(host, port)],
            heartbeats=(hb, hb),
            reconnect_attempts_max=1,
            timeout=5.0,
            auto_decode=False,
            heart_beat_receive_scale=2.0,
        )
        if self.config.tls and self.config.ca_file is not None:
            tls.use_tls(conn, host, port, self.config.ca_file)
        with self._ack_lock:
            if self._stop.is_set():
                return False
            self._generation += 1
            generation = self._generation
            self._host_of = {generation: str(host_port)}
        listener = _Listener(self, generation)
        conn.set_listener("consumer", listener)
        try:
            conn.connect(
                self.config.user,
                self.config.password,
                wait=True,
                headers={"client-id": f"{self.name}-{generation}"},
            )
            last = len(self.config.queues) - 1
            for index, queue_name in enumerate(self.config.queues):
                headers = {"activemq.prefetchSize": str(self.config.prefetch)}
                if index == last:
                    # The broker takes frames in order: this receipt confirms every subscription,
                    # so "connected" means the queues exist and a refused right shows here.
                    headers["receipt"] = listener.receipt
                conn.subscribe(f"/queue/{queue_name}", id=str(index), ack="client", headers=headers)
            listener.answered.wait(SUBSCRIBE_TIMEOUT_S)
            if not listener.subscribed:
                raise stomp.exception.ConnectFailedException("subscriptions not confirmed")
        except (stomp.exception.StompException, OSError) as exc:
            if self.refused is None:
                log.info("broker %s not reachable: %s", host_port, exc or type(exc).__name__)
            try:
                conn.transport.disconnect_socket()
            except Exception:
                log.debug("closing failed broker connection", exc_info=True)
            return False
        with self._ack_lock:
            if self._stop.is_set() or generation != self._generation:
                conn.transport.disconnect_socket()
                return False
            self._conn = conn
            self._lost.clear()
            self.connected_host = str(host_port)
        log.info(
            "%s: consuming %s from broker %s", self.name, ",".join(self.config.queues), host_port
        )
        return True

    def _trusted(self, host_port: HostPort) -> bool:
        """False when the broker is not reachable, or its certificate not trusted (then the
        consumer gives up); True without TLS."""
        ca_file = self.config.ca_file
        if not self.config.tls or ca_file is None:
            return True
        host, port = host_port.host, host_port.port
        try:
            reason = tls.untrusted(host, port, ca_file, timeout_s=5.0)
        except OSError as exc:
            log.info("broker %s not reachable: %s", host_port, exc or type(exc).__name__)
            return False
        if reason is None:
            return True
        error = BrokerUntrusted(str(host_port), str(ca_file), reason)
        self._give_up(error, "fix [broker] ca_file or the broker's certificate")
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._connect():
                return
            try:
                self._consume()
            except Exception:
                # E.g. a journal that cannot write: nothing of the batch was acked, so dropping
                # the connection hands it back to the broker for the next try.
                log.exception("%s: batch failed; reconnecting", self.name)
                self._stop.wait(1.0)
            with self._ack_lock:
                self._drop_connection()
            if not self._stop.is_set():
                log.warning("%s: broker connection lost; reconnecting", self.name)

    def _next_batch(self) -> list[Message]:
        batch: list[Message] = []
        try:
            batch.append(self._inbox.get(timeout=0.1))
        except queue.Empty:
            return batch
        deadline = time.monotonic() + self.config.batch_wait_s
        while len(batch) < self.config.batch_records:
            # What is already there is taken without a wait; only an empty inbox waits.
            try:
                batch.append(self._inbox.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._inbox.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _consume(self) -> None:
        while not self._stop.is_set() and not self._lost.is_set():
            batch = self._next_batch()
            # Messages of an earlier connection cannot be acked any more; the broker has them.
            batch = [m for m in batch if m.generation == self._generation]
            if not batch:
                continue
            self._busy = True
            try:
                if not self.handler(batch):
                    return
                with self._ack_lock:
                    if self._stop.is_set() or batch[-1].generation != self._generation:
                        return
                    self._ack(batch)
            finally:
                self._busy = False

    def _ack(self, batch: Sequence[Message]) -> None:
        last: dict[str, str] = {}
        for message in batch:
            last[message.headers.get("subscription", "")] = message.headers["ack"]
        conn = self._conn
        if conn is None:
            return
        try:
            for ack_id in last.values():
                conn.ack(ack_id)
        except (stomp.exception.StompException, OSError):
            # The broker will redeliver what this ack did not reach; the journal has it already.
            self._lost.set()
