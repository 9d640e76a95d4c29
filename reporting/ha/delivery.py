"""Hands role changes to the server: in order, one at a time, from one thread of its own.

The server may block in its callback (it stops consumers there), so the callback never runs on
kazoo's threads, whose stalling would stall the very connection the role depends on.
"""

import logging
import queue
import threading
from collections.abc import Callable

from reporting.ha.roles import RoleChange

log = logging.getLogger(__name__)

_STOP = object()


class Delivery:
    def __init__(self, name: str, on_change: Callable[[RoleChange], None]) -> None:
        self._on_change = on_change
        self._queue: queue.Queue[object] = queue.Queue()
        self._cond = threading.Condition()
        self._put = 0
        self._done = 0
        self._thread = threading.Thread(target=self._run, name=f"{name}-role-changes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, change: RoleChange) -> None:
        with self._cond:
            self._put += 1
        self._queue.put(change)

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def wait_delivered(self, timeout_s: float) -> bool:
        """Wait until every change put so far has been handed over; False on timeout."""
        if self.on_thread():
            return False  # the caller is the callback itself: what it waits for is behind it
        with self._cond:
            target = self._put
            return self._cond.wait_for(lambda: self._done >= target, timeout_s)

    def stop(self, timeout_s: float) -> None:
        self._queue.put(_STOP)
        if not self.on_thread() and self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            change = self._queue.get()
            if change is _STOP:
                return
            assert isinstance(change, RoleChange)
            try:
                self._on_change(change)
            except Exception:  # a failing callback must not stop the changes after it
                log.exception("role change callback failed for %s", change)
            with self._cond:
                self._done += 1
                self._cond.notify_all()
