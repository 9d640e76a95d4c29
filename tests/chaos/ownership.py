"""Group mode: who owns each queue, sampled from every instance's /status every 50 ms.

A tick in which two instances both say they own one queue is a breach of the one-owner
guarantee. An instance the test has frozen (SIGSTOP) is not asked while frozen; once thawed it
is asked again, so what it says right after resuming counts.
"""

from reporting.harness.instance import Instance
from reporting.harness.pair import short_name
from tests.chaos.polling import Poller

INTERVAL_S = 0.05
STATUS_TIMEOUT_S = 1.0


class OwnershipSampler(Poller):
    def __init__(self, *, interval_s: float = INTERVAL_S) -> None:
        super().__init__(workers=8, name="ownership")
        self.interval_s = interval_s
        self.ticks = 0
        # Each breach: (tick, queue, the instances that claimed it).
        self.breaches: list[tuple[int, str, tuple[str, ...]]] = []
        self._instances: list[Instance] = []

    def add(self, instance: Instance) -> None:
        with self._lock:
            self._instances.append(instance)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                asked = [i for i in self._instances if short_name(i) not in self._frozen]
            answers = self._pool.map(lambda i: i.try_status(STATUS_TIMEOUT_S), asked)
            claims: dict[str, list[str]] = {}
            for status in answers:
                for queue, q in ((status or {}).get("queues") or {}).items():
                    if q.get("role") == "active":
                        claims.setdefault(queue, []).append(status["name"])
            self.ticks += 1
            for queue, names in claims.items():
                if len(names) > 1:
                    self.breaches.append((self.ticks, queue, tuple(sorted(names))))
