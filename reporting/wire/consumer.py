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

import ctypes
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import stomp

from reporting.config import BrokerConfig
from reporting.errors import BrokerError, BrokerRefused, BrokerUnreachable, BrokerUntrusted
from reporting.wire import headers
from reporting.wire.connection import Connection, Listener, failover, is_refusal

log = logging.getLogger(__name__)

__all__ = ["BatchHandler", "Consumer", "Message", "check_login", "is_refusal"]

# How long the broker may take to confirm the subscriptions of a new connection.
SUBSCRIBE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Message:
    """One MESSAGE frame as received: where it came from, its headers and its raw body."""

    destination: str
    headers: dict[str, str]
    body: bytes
    generation: int


# Returns True when the batch is durable and may be acked; False to abandon it unacked.
BatchHandler = Callable[[Sequence[Message]], bool]


def check_login(config: BrokerConfig, *, timeout_s: float = 5.0) -> bool:
    """Logs in to the first broker of the host list that answers, and out again.

    Raises BrokerRefused if that broker refuses the credentials, BrokerUntrusted if its TLS
    certificate fails verification; returns False if no broker answered (not an error at start-up:
    the consumer waits for one), True if the login worked.
    """
    for host in config.hosts:
        conn = Connection(
            host,
            user=config.user,
            password=config.password,
            ca_file=config.ca_file if config.tls else None,
            timeout_s=timeout_s,
        )
        try:
            conn.open()
        except BrokerUnreachable:
            continue
        finally:
            conn.close()
        return True
    return False


class _Run:
    """One start() to stop() of a consumer: its thread, its stop flag, its inbox and the one
    connection it may have at a time.

    `gate` is held while a batch is handed over and acked, while a connection is installed, and
    by stop() while it closes the connection: once stop() has had it, this run hands nothing
    more to the handler, acks nothing more and opens no connection that it keeps.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.gate = threading.RLock()
        # SimpleQueue: put and get in C, without the locks and conditions of queue.Queue.
        self.inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.conn: Connection | None = None
        # `conn` once its subscriptions are confirmed.
        self.subscribed: Connection | None = None
        self.thread: threading.Thread | None = None
        self.busy = False
        # When the run's thread last showed progress (time.monotonic()): each turn of its loop,
        # each connection attempt, each wait for journal room.
        self.beat = time.monotonic()


class _Listener(Listener):
    """One connection's frames, tagged with its generation on the way to the run's inbox."""

    def __init__(self, consumer: "Consumer", run: _Run) -> None:
        self.consumer = consumer
        self.run = run
        # Set when the broker has answered the last SUBSCRIBE (or refused, or hung up).
        self.answered = threading.Event()
        self.subscribed = False
        self.receipt = ""

    def on_receipt(self, conn: Connection, frame: stomp.utils.Frame) -> None:
        if frame.headers.get("receipt-id") == self.receipt:
            self.subscribed = True
            self.answered.set()

    def on_message(self, conn: Connection, frame: stomp.utils.Frame) -> None:
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        headers = frame.headers  # a frame is made for this one message and not used again
        self.run.inbox.put(Message(headers.get("destination", ""), headers, body, conn.generation))

    def on_error(self, conn: Connection, frame: stomp.utils.Frame) -> None:
        message = str(frame.headers.get("message", "(no message)"))
        if is_refusal(message):
            error = BrokerRefused(str(conn.host), self.consumer.config.user, message)
            self.consumer._give_up(self.run, error, "fix [broker] user/password or the rights")
        else:
            log.warning("broker error: %s", message)
        self.answered.set()

    def on_lost(self, conn: Connection, reason: str) -> None:
        if reason == "heartbeat timeout":
            log.warning("broker heartbeat timed out")
        self.answered.set()


class Consumer:
    """Consumes the configured queues of one broker host list in a thread of its own.

    One connection at a time, whatever the calls: start() while running does nothing, stop()
    returns only when no batch is being handed over or acked and none can be any more, and a
    connection that is replaced is closed first.
    """

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
        # Generations count connections across runs, so a frame can never pass for a newer one's.
        self._generation = 0
        # Serializes start() and stop().
        self._control = threading.Lock()
        self._run: _Run | None = None

    def beat(self) -> None:
        """The consumer thread is making progress (called by it, or by its handler while it
        waits for journal room)."""
        run = self._run
        if run is not None:
            run.beat = time.monotonic()

    def stalled_for(self) -> float:
        """Seconds since the running consumer thread last showed progress; 0 when not running
        (a stopped consumer cannot be wedged)."""
        run = self._run
        if run is None or run.stop.is_set() or run.thread is None or not run.thread.is_alive():
            return 0.0
        return max(0.0, time.monotonic() - run.beat)

    @property
    def connected(self) -> bool:
        """Subscribed to every queue on a live connection."""
        return self._subscribed() is not None

    @property
    def connected_host(self) -> str | None:
        conn = self._subscribed()
        return str(conn.host) if conn is not None else None

    def _subscribed(self) -> Connection | None:
        run = self._run
        if run is None or run.stop.is_set():
            return None
        conn = run.subscribed
        return conn if conn is not None and conn is run.conn and conn.alive else None

    def start(self) -> None:
        """Starts consuming in a new thread; does nothing while already started. A thread of an
        earlier run that is still on its way out is waited for first."""
        with self._control:
            old = self._run
            if old is not None and not old.stop.is_set():
                return
            if old is not None and old.thread not in (None, threading.current_thread()):
                old.thread.join()
            self.refused = None
            run = self._run = _Run()
            run.thread = threading.Thread(
                target=self._consume_run, args=(run,), name=f"{self.name}-consumer", daemon=True
            )
            run.thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops at once: no batch handed over and no ack after this returns; unacked messages
        go back to the broker. A batch being handed over is waited for (a handler that waits for
        journal room must give up when told the consumer stops). Waits up to timeout_s for the
        thread to end as well; once stop() returns it can no longer consume anyway."""
        with self._control:
            run = self._run
            if run is None:
                return
            run.stop.set()
            # Waits for a batch being handed over or acked; after this the run can do neither.
            with run.gate:
                self._close(run)
            thread = run.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("%s: consumer thread still ending; it can no longer consume", self.name)

    def idle_for(self, seconds: float, *, timeout_s: float = 60.0) -> bool:
        """True once connected with no message for `seconds` (the broker is drained); False when
        stopped or when that did not happen within `timeout_s` (e.g. the broker is down)."""
        run = self._run
        if run is None:
            return False
        give_up = time.monotonic() + timeout_s
        quiet_since: float | None = None
        while time.monotonic() < give_up:
            if self.connected and run.inbox.empty() and not run.busy:
                now = time.monotonic()
                quiet_since = quiet_since or now
                if now - quiet_since >= seconds:
                    return True
            else:
                quiet_since = None
            if run.stop.wait(0.05):
                return False
        return False

    def _give_up(self, run: _Run, error: BrokerError, fix: str) -> None:
        # The consumer thread sees the stop flag and closes the connection itself.
        if self.refused is not None or run.stop.is_set():
            return
        self.refused = error
        run.stop.set()
        log.error("%s: %s; not retrying: %s", self.name, error, fix)
        if self.on_refused is not None:
            self.on_refused(error)

    def _close(self, run: _Run, conn: Connection | None = None) -> None:
        """Closes the run's connection (only if it is still `conn`, when given)."""
        with run.gate:
            if run.conn is None or (conn is not None and run.conn is not conn):
                return
            conn, run.conn, run.subscribed = run.conn, None, None
        conn.close()

    def _connect(self, run: _Run) -> Connection | None:
        """Tries each broker host in order, with growing pauses; None when stopping."""
        hosts = self.config.hosts
        return failover(hosts, lambda i: self._connect_to(run, i), stop=run.stop)

    def _connect_to(self, run: _Run, index: int) -> Connection | None:
        run.beat = time.monotonic()
        host = self.config.hosts[index]
        listener = _Listener(self, run)
        with run.gate:
            if run.stop.is_set():
                return None
            self._generation += 1
            hb = self.config.heartbeat_ms
            conn = Connection(
                host,
                generation=self._generation,
                listener=listener,
                user=self.config.user,
                password=self.config.password,
                ca_file=self.config.ca_file if self.config.tls else None,
                heartbeat_ms=hb,
                heartbeat_scale=2.0,
                timeout_s=5.0,
                client_id=f"{self.name}-{self._generation}",
            )
            # From here stop() closes it, even half open.
            run.conn = conn
        listener.receipt = f"subscribed-{conn.generation}"
        try:
            conn.open()
            with run.gate:
                if run.stop.is_set() or run.conn is not conn:
                    raise BrokerUnreachable(str(host), "consumer stopping")
                last = len(self.config.queues) - 1
                for index_, queue_name in enumerate(self.config.queues):
                    frame_headers = {"activemq.prefetchSize": str(self.config.prefetch)}
                    if index_ == last:
                        # The broker takes frames in order: this receipt confirms every
                        # subscription, so "connected" means the queues exist and a refused
                        # right shows here.
                        frame_headers["receipt"] = listener.receipt
                    conn.subscribe(
                        f"/queue/{queue_name}", id=str(index_), ack="client", headers=frame_headers
                    )
            listener.answered.wait(SUBSCRIBE_TIMEOUT_S)
            if not listener.subscribed:
                raise BrokerUnreachable(str(host), "subscriptions not confirmed")
            with run.gate:
                if run.conn is not conn:
                    raise BrokerUnreachable(str(host), "consumer stopping")
                run.subscribed = conn
        except BrokerUntrusted as error:
            self._close(run, conn)
            self._give_up(run, error, "fix [broker] ca_file or the broker's certificate")
            return None
        except BrokerRefused as error:
            self._close(run, conn)
            self._give_up(run, error, "fix [broker] user/password or the rights")
            return None
        except BrokerUnreachable as exc:
            self._close(run, conn)
            if self.refused is None and not run.stop.is_set():
                log.info("broker %s not reachable: %s", host, exc.reason)
            return None
        queues = ",".join(self.config.queues)
        log.info(
            "%s: consuming %s from broker %s", self.name, queues, host, extra={"queue": queues}
        )
        return conn

    def _consume_run(self, run: _Run) -> None:
        _name_os_thread(f"{self.name}-consumer")
        while not run.stop.is_set():
            conn = self._connect(run)
            if conn is None:
                return
            try:
                self._consume(run, conn)
            except Exception:
                # E.g. a journal that cannot write: nothing of the batch was acked, so dropping
                # the connection hands it back to the broker for the next try.
                log.exception("%s: batch failed; reconnecting", self.name)
                run.stop.wait(1.0)
            self._close(run, conn)
            if not run.stop.is_set():
                log.warning("%s: broker connection lost; reconnecting", self.name)

    def _next_batch(self, run: _Run) -> list[Message]:
        inbox = run.inbox
        batch: list[Message] = []
        try:
            batch.append(inbox.get(timeout=0.1))
        except queue.Empty:
            return batch
        deadline = time.monotonic() + self.config.batch_wait_s
        while len(batch) < self.config.batch_records:
            # What is already there is taken without a wait; only an empty inbox waits.
            try:
                batch.append(inbox.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(inbox.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _consume(self, run: _Run, conn: Connection) -> None:
        while not run.stop.is_set() and conn.alive:
            run.beat = time.monotonic()
            batch = self._next_batch(run)
            # Messages of an earlier connection cannot be acked any more; the broker has them.
            batch = [m for m in batch if m.generation == conn.generation]
            if not batch:
                continue
            with run.gate:
                # stop() may have come while the batch was gathered: then it is not handed over.
                if run.stop.is_set() or run.conn is not conn:
                    return
                run.busy = True
                try:
                    if not self.handler(batch):
                        return
                    if run.stop.is_set() or run.conn is not conn or not self._ack(conn, batch):
                        return
                finally:
                    run.busy = False

    def _ack(self, conn: Connection, batch: Sequence[Message]) -> bool:
        last: dict[str, str] = {}
        for message in batch:
            last[message.headers.get("subscription", "")] = message.headers["ack"]
        try:
            for ack_id in last.values():
                conn.ack(ack_id)
        except BrokerUnreachable:
            # The broker will redeliver what this ack did not reach; the journal has it already.
            return False
        return True


def _name_os_thread(name: str) -> None:
    """The calling thread's name as the kernel shows it (`top -H`, `ps -L`, /proc/PID/task/TID/
    comm; 15 bytes at most), so that an operator can tell the consumer thread from the others."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass  # not Linux: the name is a convenience only
