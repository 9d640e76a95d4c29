"""Reports sent with receipts into a ledger, and the ledger checked against the database: every
receipted report stored, none twice. Used by the tests, chaos rounds and the container tests."""

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reporting.harness.waiting import wait_until
from reporting.samples import sample_report
from reporting.wire.producer import ReportClient, queues_by_kind
from storage.database import Sink
from storage.errors import DatabaseError
from storage.reports import KINDS

log = logging.getLogger(__name__)


class Flow:
    """Reports sent in a background thread at a steady rate, every receipted id in a ledger:
    `count` of them (join() waits for the last receipt), or with `count=None` until stop().

    The destinations are `queues` by kind, or each kind's queue under `queue_prefix`. Report ids
    are `<kind>-<run_tag>-<n>`, unique within a run (`run_tag` is random unless given). Held up
    by an outage, the flow goes on at its steady rate, not in a burst."""

    def __init__(
        self,
        hosts: list[str],
        ledger: Path,
        *,
        count: int | None,
        rate: float,
        queue_prefix: str = "",
        queues: Sequence[str] = (),
        rng: random.Random | None = None,
        run_tag: str = "",
        **client_options: Any,
    ) -> None:
        self.client = ReportClient(hosts, ledger=ledger, in_flight=50, **client_options)
        queues = queues or [f"{queue_prefix}gvp.reporting.{kind}" for kind in KINDS]
        self.destinations = {k: f"/queue/{q}" for k, q in queues_by_kind(queues).items()}
        self.ledger = ledger
        self.count = count
        self.rate = rate
        self.rng = rng or random.Random(7)
        self.run_tag = run_tag or uuid.uuid4().hex[:12]
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flow", daemon=True)

    @property
    def confirmed(self) -> int:
        return self.client.stats.confirmed

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        started = time.monotonic()
        n = 0
        try:
            with self.client:
                while (self.count is None or n < self.count) and not self._stop.is_set():
                    kind = KINDS[n % len(KINDS)]
                    body = json.dumps(sample_report(kind, self.rng)).encode()
                    report_id = f"{kind}-{self.run_tag}-{n:08d}"
                    self.client.send_raw(self.destinations[kind], body, report_id=report_id)
                    n += 1
                    self.sent = n
                    if not self.rate:
                        continue
                    ahead = n / self.rate - (time.monotonic() - started)
                    if ahead < -1.0:
                        started = time.monotonic() - n / self.rate
                    elif ahead > 0:
                        # Pacing the flow; a stop request ends the wait early.
                        self._stop.wait(ahead)
        except BaseException as exc:  # reported by join() and stop(), and with a chaos result
            log.warning("flow stopped by %r after %d reports", exc, n)
            self.error = exc

    def start(self) -> "Flow":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 180) -> None:
        """Stops sending and waits for the receipts of what was sent; the ledger is closed."""
        self._stop.set()
        if self._thread.ident is None:  # never started
            self.client.close()
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.error = self.error or TimeoutError(f"flow not done after {timeout_s:.0f} s")

    def join(self, timeout_s: float = 300) -> set[str]:
        """Waits for the last receipt; the ids receipted."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "producer did not finish"
        if self.error is not None:
            raise self.error
        return self.ids()

    def ids(self) -> set[str]:
        return {line for line in self.ledger.read_text().splitlines() if line}


def assert_exactly_once(db_url: str, ledger_ids: set[str], *, timeout_s: float = 120) -> None:
    """Every receipted id ends up stored, once; polls until the drain has caught up."""
    sink = Sink(db_url, cluster="verify", journal="verify")
    try:

        def all_stored() -> bool:
            try:
                counts = sink.report_id_counts(ledger_ids)
            except DatabaseError:
                # Down, or its schema not made yet by a server that started while it was down.
                return False
            return sum(1 for n in counts.values() if n >= 1) == len(ledger_ids)

        try:
            wait_until(all_stored, timeout_s, "every receipted report to be stored", every_s=0.5)
        finally:
            counts = sink.report_id_counts(ledger_ids)
            missing = [i for i in ledger_ids if counts.get(i, 0) == 0]
            doubled = [i for i, n in counts.items() if n > 1]
            assert not missing, f"{len(missing)} receipted reports missing, e.g. {missing[:5]}"
            assert not doubled, f"{len(doubled)} reports stored twice, e.g. {doubled[:5]}"
    finally:
        sink.close()
