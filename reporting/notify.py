"""systemd's notify protocol (sd_notify(3)): READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 as
datagrams to the unix socket named in $NOTIFY_SOCKET (a leading '@' is the abstract namespace).

Without $NOTIFY_SOCKET (not run by systemd as Type=notify) every call does nothing. A datagram
that cannot be sent is logged once and dropped: the service manager's troubles must not stop
the server.

The watchdog ping is sent only while the instance's working threads show progress (`working`,
from the server): a wedged consumer thread stops the pings, and systemd restarts the instance
(its peer takes the role meanwhile), where a plain timer would keep a wedged server alive.
"""

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> "Notifier":
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> None:
        """One datagram of `KEY=value` lines."""
        if self.address is None:
            return
        data = "\n".join(fields).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._socket.sendto(data, self.address)
                self._failed = False
            except OSError as exc:
                if not self._failed:
                    log.warning("systemd notify socket %s: %s", self.address, exc)
                self._failed = True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def watchdog_interval_s(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """systemd's WatchdogSec= in seconds, from $WATCHDOG_USEC, if it is meant for this process
    ($WATCHDOG_PID unset or ours); else None."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid if pid is not None else os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class ServiceNotifier:
    """Tells systemd how the instance is: READY=1 once `joined`, STATUS= whenever `describe`
    changes, WATCHDOG=1 while `working(within_s)`, on a thread of its own.

    `working(within_s)` says whether every working thread has shown progress in the last
    `within_s` seconds; half the watchdog interval is allowed, and the ping comes four times per
    interval, so a stall is noticed before systemd's time-out and a live instance is never late.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        joined: Callable[[], bool],
        describe: Callable[[], str],
        working: Callable[[float], bool],
        watchdog_s: float | None,
        every_s: float = 0.1,
    ) -> None:
        self.notifier = notifier
        self._joined = joined
        self._describe = describe
        self._working = working
        self.watchdog_s = watchdog_s
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="systemd-notify", daemon=True)
        self._stalled = False

    def start(self) -> None:
        if self.notifier.enabled:
            self._thread.start()

    def stop(self) -> None:
        """STOPPING=1, from the thread that handles the signal; no more pings after it."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5.0)
        self.notifier.stopping()

    def _run(self) -> None:
        while not self._joined():
            if self._stop.wait(self._every_s):
                return
        shown = self._describe()
        self.notifier.ready(shown)
        next_ping = time.monotonic()
        while not self._stop.wait(self._every_s):
            now = self._describe()
            if now != shown:
                shown = now
                self.notifier.status(now)
            if self.watchdog_s is not None and time.monotonic() >= next_ping:
                next_ping = time.monotonic() + self.watchdog_s / 4
                self._ping()

    def _ping(self) -> None:
        assert self.watchdog_s is not None
        if self._working(self.watchdog_s / 2):
            if self._stalled:
                log.warning("working threads show progress again; systemd watchdog pinged")
            self._stalled = False
            self.notifier.watchdog()
        elif not self._stalled:
            self._stalled = True
            log.error(
                "a consumer thread has shown no progress for %.1f s: systemd watchdog not pinged",
                self.watchdog_s / 2,
            )
