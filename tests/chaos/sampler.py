"""Both instances' /status, polled together every 50 ms for the whole run.

Each tick asks every instance at once and records one `Sample` per instance; with `exclusive`
(shared storage) a tick in which two instances answer "active" is a breach of the one-writer
guarantee. An instance the run has frozen
(SIGSTOP) is not asked, since it cannot answer and cannot act: it is recorded as "paused".
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from reporting.harness.instance import Instance
from reporting.harness.pair import short_name
from tests.chaos.polling import Poller

INTERVAL_S = 0.05
# Longer than any answer of a working instance on a loaded machine.
STATUS_TIMEOUT_S = 1.0

PAUSED = "paused"
UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the run started
    name: str
    role: str  # "active", "standby", "paused" or "unreachable"
    stored: int | None
    epoch: int | None
    pending: int | None


class Sampler(Poller):
    def __init__(
        self,
        instances: list[Instance],
        *,
        clock: Callable[[], float],
        exclusive: bool,
        receipted: Callable[[], int] = lambda: 0,
        interval_s: float = INTERVAL_S,
    ) -> None:
        super().__init__(workers=len(instances), name="chaos-status")
        self.instances = instances
        self.exclusive = exclusive
        self.clock = clock
        self.receipted = receipted
        # (t, reports the producer has had receipts for), one per tick.
        self.receipts: list[tuple[float, int]] = []
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        # Ticks with two "active" answers (only where that is a breach), each as its samples.
        self.two_active: list[tuple[Sample, ...]] = []
        self.ticks = 0
        self._latest: dict[str, Sample] = {}

    def latest(self) -> dict[str, Sample]:
        """The last sample of each instance."""
        with self._lock:
            return dict(self._latest)

    def roles(self) -> dict[str, str]:
        return {name: sample.role for name, sample in self.latest().items()}

    def first_since(self, t: float, predicate: Callable[[Sample], bool]) -> Sample | None:
        """The earliest sample taken at or after `t` that satisfies `predicate`."""
        with self._lock:
            start = len(self.samples)
            # Samples are appended in time order, tick by tick.
            while start > 0 and self.samples[start - 1].t >= t:
                start -= 1
            recent = self.samples[start:]
        return next((s for s in recent if predicate(s)), None)

    def pending(self) -> dict[str, int | None]:
        return {name: sample.pending for name, sample in self.latest().items()}

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self._tick()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - began)))

    def _tick(self) -> None:
        with self._lock:
            frozen = set(self._frozen)
        asked = {
            short_name(i): self._pool.submit(i.try_status, STATUS_TIMEOUT_S)
            for i in self.instances
            if short_name(i) not in frozen
        }
        tick = [Sample(self.clock(), name, PAUSED, None, None, None) for name in sorted(frozen)]
        for name, future in asked.items():
            status = future.result()
            t = self.clock()
            if status is None:
                tick.append(Sample(t, name, UNREACHABLE, None, None, None))
            else:
                pending = (status.get("journal") or {}).get("pending")
                tick.append(
                    Sample(t, name, status["role"], status.get("stored"), status["epoch"], pending)
                )
        with self._lock:
            self.samples.extend(tick)
            self.receipts.append((self.clock(), self.receipted()))
            self._latest.update((s.name, s) for s in tick)
            self.ticks += 1
            if self.exclusive and sum(1 for s in tick if s.role == "active") > 1:
                self.two_active.append(tuple(tick))
