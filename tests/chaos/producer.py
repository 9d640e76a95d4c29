"""A steady stream of reports through the reporting client, every receipted id in a ledger."""

import json
import logging
import random
import threading
import time
from pathlib import Path

from reporting.samples import sample_report
from reporting.wire.producer import ReportClient, queues_by_kind
from storage.reports import KINDS

log = logging.getLogger(__name__)


class Producer:
    """Sends reports at `rate_per_s` in a thread until stopped; the ledger lists every id the
    broker confirmed. Report ids are `<kind>-<run>-<n>`, unique within a run."""

    def __init__(
        self,
        hosts: list[str],
        queues: list[str],
        ledger: Path,
        *,
        rate_per_s: float,
        run_tag: str,
        rng: random.Random,
    ) -> None:
        # A broker restart takes a while on a loaded machine; the client keeps trying that long.
        self.client = ReportClient(hosts, ledger=ledger, in_flight=50, reconnect_timeout_s=120)
        self.destinations = {k: f"/queue/{q}" for k, q in queues_by_kind(queues).items()}
        self.ledger = ledger
        self.rate_per_s = rate_per_s
        self.run_tag = run_tag
        self.rng = rng
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-producer", daemon=True)

    @property
    def confirmed(self) -> int:
        return self.client.stats.confirmed

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> "Producer":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 180) -> None:
        """Stop sending, wait for the receipts of what was sent, close the ledger."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.error = self.error or TimeoutError(f"producer not done after {timeout_s:.0f} s")

    def _run(self) -> None:
        started = time.monotonic()
        n = 0
        try:
            with self.client:
                while not self._stop.is_set():
                    kind = KINDS[n % len(KINDS)]
                    body = json.dumps(sample_report(kind, self.rng)).encode()
                    report_id = f"{kind}-{self.run_tag}-{n:08d}"
                    self.client.send_raw(self.destinations[kind], body, report_id=report_id)
                    n += 1
                    self.sent = n
                    ahead = n / self.rate_per_s - (time.monotonic() - started)
                    if ahead < -1.0:
                        # Held up by an outage: go on at the steady rate, not in a burst.
                        started = time.monotonic() - n / self.rate_per_s
                    elif ahead > 0:
                        # Pacing the stream; a stop request ends the wait early.
                        self._stop.wait(ahead)
        except BaseException as exc:  # the runner reports it with the result
            log.warning("producer stopped by %r after %d reports", exc, n)
            self.error = exc
