"""Reports sent with receipts into a ledger, and the ledger checked against the database: every
receipted report stored, none twice. Used by the tests, chaos rounds and the container tests."""

import json
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from reporting.harness.waiting import wait_until
from reporting.samples import sample_report
from reporting.wire.producer import ReportClient
from storage.database import Sink
from storage.errors import DatabaseError
from storage.reports import KINDS


class Flow:
    """Reports sent in a background thread at a steady rate, every receipted id in a ledger."""

    def __init__(
        self,
        hosts: list[str],
        ledger: Path,
        *,
        queue_prefix: str,
        count: int,
        rate: float,
        **client_options: Any,
    ) -> None:
        self.client = ReportClient(hosts, ledger=ledger, in_flight=50, **client_options)
        self.queue_prefix = queue_prefix
        self.ledger = ledger
        self.count = count
        self.rate = rate
        self.sent = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="flow", daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        started = time.monotonic()
        try:
            for i in range(self.count):
                kind = KINDS[i % len(KINDS)]
                body = json.dumps(sample_report(kind, rng)).encode()
                destination = f"/queue/{self.queue_prefix}gvp.reporting.{kind}"
                self.client.send_raw(destination, body, report_id=f"{kind}-{uuid.uuid4().hex}")
                self.sent += 1
                if self.rate:
                    ahead = (i + 1) / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)  # pacing the producer, not synchronising the test
            self.client.flush()
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> "Flow":
        self._thread.start()
        return self

    def join(self, timeout_s: float = 300) -> set[str]:
        """Waits for the last receipt; the ids receipted."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "producer did not finish"
        self.client.close()
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
