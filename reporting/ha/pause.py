"""Noticing that this process was paused (SIGSTOP, a frozen VM, a long stall).

A paused active instance cannot know on resuming that its ZooKeeper session expired meanwhile
and another instance took the role: its election still says active until the ZooKeeper client
notices, a moment later. What it reports in that moment must not be "active". A thread ticks
every `tick_s`; a gap between ticks longer than `gap_s`, or no tick for that long, means the
process was not running, and for `distrust_s` after it the role is taken as unconfirmed. By
then the ZooKeeper client has either confirmed the session or reported it lost.
"""

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class PauseDetector:
    def __init__(
        self,
        *,
        gap_s: float,
        distrust_s: float,
        tick_s: float = 0.05,
        on_pause: Callable[[float], None] | None = None,
    ) -> None:
        self.on_pause = on_pause
        self.gap_s = gap_s
        self.distrust_s = distrust_s
        self.tick_s = tick_s
        self._last_tick = time.monotonic()
        self._paused_until = 0.0
        self.pauses = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pause-detector", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        gap = now - self._last_tick
        self._last_tick = now
        if gap > self.gap_s:
            self.pauses += 1
            self._paused_until = now + self.distrust_s
            if self.on_pause is not None:
                self.on_pause(gap)

    @classmethod
    def for_session(cls, name: str, session_s: float, *, what: str) -> "PauseDetector":
        """Distrusts `what` (the role, the queues owned) for one session after a pause longer
        than half of it, and logs each such pause."""
        return cls(
            gap_s=session_s / 2,
            distrust_s=session_s,
            on_pause=lambda gap: log.warning(
                "%s: this process did not run for %.1f s; %s unconfirmed for %.1f s",
                name,
                gap,
                what,
                session_s,
            ),
        )

    def suspect(self) -> bool:
        """True while the role of this process may have been lost during a pause."""
        now = time.monotonic()
        return now - self._last_tick > self.gap_s or now < self._paused_until
