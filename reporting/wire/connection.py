"""One STOMP connection recipe, shared by the consumer, the producer and the health probe.

A `Connection` is one login to one broker host, numbered by a generation its owner chooses. Every
frame it hands on names the connection, so an owner that has moved on can tell a late frame of an
old connection from the current ones. Once `close()` has returned, a connection hands on nothing
more: its receiver thread has ended, and a frame it still had is dropped at the gate.

`failover` walks a priority-ordered host list with growing pauses between rounds; `reachable` is
the cheap TCP probe of a health check.
"""

import logging
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import stomp
import stomp.exception
import tenacity

from reporting.config import HostPort
from reporting.errors import BrokerRefused, BrokerUnreachable, BrokerUntrusted
from reporting.wire import tls
from reporting.wire.login import connect_value, login_refusal

log = logging.getLogger(__name__)

T = TypeVar("T")

# ERROR messages that mean "these credentials or rights are wrong", of ActiveMQ Classic
# ("User name [x] or password is invalid.", "User x is not authorized to read from: ...") and
# Artemis (AMQ229031 "Unable to validate user", AMQ229032 "does not have permission").
_REFUSAL = re.compile(
    r"password is invalid|not authori[sz]ed|unable to validate user|does not have permission"
    r"|authentication failed|AMQ22903[12]",
    re.IGNORECASE,
)

# Errors of stomp.py and of the socket under it; callers see BrokerUnreachable instead.
_WIRE_ERRORS = (stomp.exception.StompException, OSError)


def is_refusal(message: str) -> bool:
    """True if a broker's ERROR message refuses the credentials or the rights of the client."""
    return _REFUSAL.search(message) is not None


class Listener:
    """What a connection hands its owner, on the connection's receiver thread. Each method does
    nothing here; an owner overrides those it needs."""

    def on_message(self, conn: "Connection", frame: stomp.utils.Frame) -> None:
        pass

    def on_receipt(self, conn: "Connection", frame: stomp.utils.Frame) -> None:
        pass

    def on_error(self, conn: "Connection", frame: stomp.utils.Frame) -> None:
        """An ERROR frame after the login (one during the login makes `open` raise instead)."""

    def on_lost(self, conn: "Connection", reason: str) -> None:
        """The connection broke (socket closed or heartbeat lost); not called after `close`."""


def _message_handlers(listeners: list[tuple[str, Any]]) -> list[Callable[..., None]]:
    """What stomp.py calls for a MESSAGE, in its order (every listener's on_before_message, then
    every on_message, by listener name), less the methods a listener left as the base's no-op:
    the heartbeat listener's on_message, which notes that the broker is alive, stays."""
    base = stomp.ConnectionListener
    handlers = []
    for method in ("on_before_message", "on_message"):
        for _, listener in listeners:
            if getattr(type(listener), method, None) is not getattr(base, method):
                handlers.append(getattr(listener, method))
    return handlers


class _Relay(stomp.ConnectionListener):
    def __init__(self, conn: "Connection") -> None:
        self.conn = conn

    def on_connected(self, frame: stomp.utils.Frame) -> None:
        self.conn._logged_in()

    def on_message(self, frame: stomp.utils.Frame) -> None:
        if not self.conn.closed:
            self.conn.listener.on_message(self.conn, frame)

    def on_receipt(self, frame: stomp.utils.Frame) -> None:
        self.conn._receipt(frame)

    def on_error(self, frame: stomp.utils.Frame) -> None:
        self.conn._error(frame)

    def on_disconnected(self) -> None:
        self.conn._lose("connection lost")

    def on_heartbeat_timeout(self) -> None:
        self.conn._lose("heartbeat timeout")


class Connection:
    """One STOMP 1.2 connection to one broker host.

    With `ca_file` it speaks TLS and trusts only that file's CAs. `heartbeat_ms` is asked for both
    ways; the broker's heartbeats may be `heartbeat_scale` times late before the connection counts
    as lost. `timeout_s` bounds the TCP connect, the TLS check and the wait for CONNECTED.
    """

    def __init__(
        self,
        host: HostPort,
        *,
        generation: int = 0,
        listener: Listener | None = None,
        user: str | None = None,
        password: str | None = None,
        ca_file: Path | str | None = None,
        heartbeat_ms: int = 0,
        heartbeat_scale: float = 1.5,
        timeout_s: float = 5.0,
        client_id: str | None = None,
    ) -> None:
        self.host = host
        self.generation = generation
        self.listener = listener or Listener()
        self.user = user
        self._password = password
        self.ca_file = ca_file
        self.timeout_s = timeout_s
        self.client_id = client_id
        self._lock = threading.Lock()
        # Set by CONNECTED, a login ERROR, a lost connection or close(): open() waits on it.
        self._answered = threading.Event()
        self._login_done = False
        self._login_error: str | None = None
        self._lost: str | None = None
        self._closed = False
        self._bye_receipt: str | None = None
        self._bye = threading.Event()
        self._stomp = stomp.Connection12(
            [(host.host, host.port)],
            prefer_localhost=False,
            try_loopback_connect=False,
            reconnect_attempts_max=1,
            reconnect_sleep_initial=0.0,
            heartbeats=(heartbeat_ms, heartbeat_ms),
            heart_beat_receive_scale=heartbeat_scale,
            timeout=timeout_s,
            auto_decode=False,
        )
        if ca_file is not None:
            tls.use_tls(self._stomp, host.host, host.port, ca_file)
        self._stomp.set_listener("relay", _Relay(self))
        transport = self._stomp.transport
        self._process_frame = transport.process_frame
        self._listeners_seen: tuple[tuple[str, Any], ...] = ()
        self._message_handlers: list[Callable[[stomp.utils.Frame], None]] = []
        transport.process_frame = self._deliver

    def __repr__(self) -> str:
        return f"<Connection {self.host} generation {self.generation}>"

    def _deliver(self, frame: stomp.utils.Frame, raw: bytes) -> None:
        """stomp.py's process_frame, but a MESSAGE goes straight to the listeners' handlers:
        stomp.py looks each listener's two methods up again, under a lock, for every message."""
        if frame.cmd != "MESSAGE":
            self._process_frame(frame, raw)
            return
        if stomp.log.isEnabledFor(stomp.log.DEBUG):
            # stomp.py's own line, which the log filter keeps without the body.
            stomp.log.debug(
                "received frame: %r, headers=%r, body=%r", frame.cmd, frame.headers, frame.body
            )
        listeners = tuple(self._stomp.transport.listeners.items())
        if listeners != self._listeners_seen:
            self._listeners_seen = listeners
            self._message_handlers = _message_handlers(sorted(listeners))
        for handler in self._message_handlers:
            handler(frame)

    @property
    def closed(self) -> bool:
        """True once close() was called: from then on nothing is handed to the listener."""
        return self._closed

    @property
    def alive(self) -> bool:
        """Logged in, not lost, not closed."""
        return (
            self._login_done
            and self._lost is None
            and not self._closed
            and self._stomp.is_connected()
        )

    def open(self) -> None:
        """Connects and logs in.

        Raises BrokerUntrusted when ca_file does not trust the broker's certificate, BrokerRefused
        when the broker refuses the login, and BrokerUnreachable for the rest: no answer within
        timeout_s, another ERROR, or close() called meanwhile.
        """
        where = str(self.host)
        if self.ca_file is not None:
            # stomp.py reports a failed handshake only as a failed connection; this tells the
            # certificate that will never be trusted (to fix) from a broker that is down.
            try:
                reason = tls.untrusted(
                    self.host.host, self.host.port, self.ca_file, timeout_s=self.timeout_s
                )
            except OSError as exc:
                raise BrokerUnreachable(where, _describe(exc)) from None
            if reason is not None:
                raise BrokerUntrusted(where, str(self.ca_file), reason)
        # A login ActiveMQ would read as another is refused here, not sent.
        refusal = login_refusal(self.user, self._password)
        if refusal is not None:
            what, reason = refusal
            self._shutdown()
            raise BrokerRefused(where, self.user, f"the {what} {reason}")
        frame_headers = {"client-id": self.client_id} if self.client_id else {}
        try:
            if self._closed:
                raise BrokerUnreachable(where, "closed")
            user, password = (
                None if value is None else connect_value(value)
                for value in (self.user, self._password)
            )
            self._stomp.connect(user, password, wait=False, headers=frame_headers)
        except Exception as exc:
            self._shutdown()
            # A close() during the TCP connect leaves stomp.py half torn down; what it raises
            # then (TypeError, say) only means "closed".
            if self._closed:
                raise BrokerUnreachable(where, "closed while connecting") from None
            if isinstance(exc, _WIRE_ERRORS):
                raise BrokerUnreachable(where, _describe(exc)) from None
            raise
        self._answered.wait(self.timeout_s)
        with self._lock:
            if self._login_done and self._lost is None and not self._closed:
                return
            login_error, lost, closed = self._login_error, self._lost, self._closed
        self._shutdown()
        if login_error is not None and is_refusal(login_error):
            raise BrokerRefused(where, self.user, login_error)
        if closed:
            raise BrokerUnreachable(where, "closed while connecting")
        raise BrokerUnreachable(where, login_error or lost or "no CONNECTED frame in time")

    def subscribe(self, destination: str, *, id: str, ack: str, headers: dict[str, str]) -> None:
        self._call(self._stomp.subscribe, destination, id=id, ack=ack, headers=headers)

    def ack(self, ack_id: str) -> None:
        self._call(self._stomp.ack, ack_id)

    def send(self, destination: str, body: bytes, *, headers: dict[str, str]) -> None:
        self._call(self._stomp.send, destination, body, headers=headers)

    def close(self, *, polite: bool = False) -> None:
        """Closes the connection; no frame reaches the listener once this has returned.

        Polite: a DISCONNECT first, and a wait (at most timeout_s) for the broker's receipt, which
        comes once it has handled every frame sent before. Otherwise the socket is just closed,
        which is enough for a broker to hand every unacked message to the next consumer, and
        cannot hang on a dark path as a DISCONNECT can. Safe from any thread, more than once, and
        during open(), which it cuts short.
        """
        if polite and self.alive and self._bye_receipt is None:
            self._bye_receipt = f"bye-{uuid.uuid4().hex}"
            try:
                self._stomp.send_frame("DISCONNECT", {"receipt": self._bye_receipt})
                self._bye.wait(self.timeout_s)
            except _WIRE_ERRORS:
                pass
        with self._lock:
            self._closed = True
        self._answered.set()
        self._shutdown()
        io_thread = getattr(self._stomp.transport, "io_thread", None)
        if io_thread is not None and io_thread is not threading.current_thread():
            io_thread.join(self.timeout_s)

    # -- the receiver thread's side --------------------------------------------------------------

    def _logged_in(self) -> None:
        with self._lock:
            self._login_done = True
        self._answered.set()

    def _receipt(self, frame: stomp.utils.Frame) -> None:
        if self._bye_receipt is not None and frame.headers.get("receipt-id") == self._bye_receipt:
            self._bye.set()
        elif not self._closed:
            self.listener.on_receipt(self, frame)

    def _error(self, frame: stomp.utils.Frame) -> None:
        with self._lock:
            logging_in = not self._login_done
            if logging_in:
                self._login_error = str(frame.headers.get("message", "(no message)"))
        if logging_in:
            self._answered.set()
        elif not self._closed:
            self.listener.on_error(self, frame)

    def _lose(self, reason: str) -> None:
        with self._lock:
            first = self._lost is None
            self._lost = self._lost or reason
        self._bye.set()
        self._answered.set()
        if first and not self._closed:
            self.listener.on_lost(self, reason)

    # -- helpers ---------------------------------------------------------------------------------

    def _call(self, method: Callable[..., object], *args: object, **kwargs: object) -> None:
        if self._closed:
            raise BrokerUnreachable(str(self.host), "connection closed")
        try:
            method(*args, **kwargs)
        except _WIRE_ERRORS as exc:
            raise BrokerUnreachable(str(self.host), _describe(exc)) from None

    def _shutdown(self) -> None:
        transport = self._stomp.transport
        sock = getattr(transport, "socket", None)
        if sock is not None:
            # A plain shutdown first: stomp.py's own close of a TLS socket waits for the peer's
            # close_notify, which never comes over a dark path.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            transport.disconnect_socket()
        except Exception:  # the transport may be half torn down already; nothing to release
            log.debug("closing %r", self, exc_info=True)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def failover(
    hosts: Sequence[HostPort],
    attempt: Callable[[int], T | None],
    *,
    first: int = 0,
    stop: threading.Event | None = None,
    give_up_s: float | None = None,
    max_pause_s: float = 5.0,
) -> T | None:
    """Calls `attempt(index)` for each host, from `first` round the list, until one returns a
    result, which it returns. Between rounds it pauses, 0.1 s at first, doubling up to max_pause_s,
    so a broker that is restarting is not hammered. Returns None as soon as `stop` is set; raises
    BrokerUnreachable once give_up_s has passed without a result."""
    stop = stop if stop is not None else threading.Event()

    def one_round() -> T | None:
        for step in range(len(hosts)):
            if stop.is_set():
                return None
            result = attempt((first + step) % len(hosts))
            if result is not None:
                return result
        return None

    until: tenacity.stop.stop_base = tenacity.stop_when_event_set(stop)
    if give_up_s is not None:
        until = until | tenacity.stop_after_delay(give_up_s)
    retrying = tenacity.Retrying(
        stop=until,
        wait=tenacity.wait_exponential(multiplier=0.1, max=max_pause_s),
        retry=tenacity.retry_if_result(lambda result: result is None),
        retry_error_callback=lambda state: None,
        sleep=stop.wait,
    )
    result = retrying(one_round)
    if result is None and not stop.is_set():
        names = ", ".join(map(str, hosts))
        raise BrokerUnreachable(names, f"no broker answered within {give_up_s} s")
    return result


def reachable(hosts: Iterable[HostPort], timeout_s: float = 0.5) -> bool:
    """True if any of the hosts accepts a TCP connection within timeout_s: a broker is up there,
    though not necessarily one that lets us log in."""
    for host in hosts:
        try:
            socket.create_connection((host.host, host.port), timeout=timeout_s).close()
            return True
        except OSError:
            continue
    return False
