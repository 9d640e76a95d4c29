"""The intake: broker batch -> journal (fsync) -> ack.

`Intake` is the consumer's batch handler: it validates each message into a report or a rejected
message, appends the batch to the journal, and returns True (ack) only after the fsync. When the
journal is full it holds the batch, unacked, until the drainer has made room: the broker keeps the
rest (prefetch bounds what is in flight), which is the back-pressure. Draining can always make
that room (the journal frees its drained open segment for a waiting append); a batch larger than
an empty journal can take goes in parts.
"""

import logging
import operator
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from reporting.config import BrokerConfig, Config
from reporting.logs import About
from reporting.status.metrics import Metrics
from reporting.wire.consumer import Message
from reporting.wire.decode import decode
from storage.errors import (
    DiskFull,
    JournalError,
    JournalFull,
)
from storage.journal import Journal
from storage.reports import kind_of, to_record

log = logging.getLogger(__name__)
_queue_of = operator.attrgetter("queue")


def open_journal(config: Config, directory: Path, *, epoch: int, metrics: Metrics) -> Journal:
    """The instance's journal in `directory`, written under `epoch`, with `[journal]`'s limits."""
    j = config.journal
    return Journal(
        directory,
        writer=config.name,
        epoch=epoch,
        max_bytes=j.max_bytes,
        segment_bytes=j.segment_bytes,
        retain_s=j.retain_s,
        on_quarantine=lambda path, reason: metrics.quarantined.inc(),
        # Names used before may be known only to the database: the drainer tells them.
        names_known=False,
    )


class Intake:
    def __init__(
        self,
        journal: Callable[[], Journal],
        broker: BrokerConfig,
        *,
        metrics: Metrics,
        room: threading.Event,
        appended: Callable[[], None],
        may_continue: Callable[[], bool],
    ) -> None:
        self.journal = journal
        self.queues = frozenset(broker.queues)
        self.log = About(log, queue=broker.queues)
        self.max_body_bytes = broker.max_body_bytes
        self.metrics = metrics
        self.room = room
        self.appended = appended
        self.may_continue = may_continue
        self.paused = False
        self.records = 0

    def __call__(self, batch: Sequence[Message]) -> bool:
        now = datetime.now(UTC)
        queues, limit = self.queues, self.max_body_bytes
        items = [decode(m.destination, m.headers, m.body, queues, limit, now) for m in batch]
        records = [to_record(item) for item in items]
        if not self._append(records):
            return False
        if self.paused:
            self.paused = False
            self.log.info("journal has room again; consumption resumed")
        self.records += len(records)
        self.metrics.journalled.inc(len(records))
        # Counted per kind, one metric update each: a labelled update costs a lock and a lookup.
        for queue, count in Counter(map(_queue_of, items)).items():
            self.metrics.received.labels(kind_of(queue)).inc(count)
        self.appended()
        return True

    def _append(self, records: list[bytes]) -> bool:
        """True once every record is journalled (fsynced); False to leave the batch unacked."""
        parts = [records]
        waited = False  # for room, since the last part went in
        while parts:
            part = parts[0]
            self.room.clear()
            try:
                with self.metrics.append_seconds.time():
                    self.journal().append_batch(part)
            except JournalFull as exc:
                # A full disk with everything drained gets one wait first: the journal frees
                # its drained open segment for it.
                drained = self.journal().pending.records == 0
                if len(part) > 1 and drained and (waited or not isinstance(exc, DiskFull)):
                    # Nothing is left to drain, so no drain can make room for the whole batch:
                    # it goes in halves. Only the whole batch is acked; a part journalled
                    # twice after a redelivery is stored once, by its report id.
                    half = len(part) // 2
                    parts[0:1] = [part[:half], part[half:]]
                    continue
                waited = True
                if not self.paused:
                    self.paused = True
                    self.metrics.journal_full.inc()
                    self.log.warning("journal full (%s); consumption paused until it drains", exc)
                # Held unacked: the broker keeps these and sends no more than the prefetch.
                # The drainer sets `room` when it has freed some; an outside process freeing
                # disk space does not, hence the time-out.
                self.room.wait(0.5)
                if not self.may_continue():
                    return False
                continue
            except JournalError as exc:
                # E.g. the segment was removed under us: the batch may not be durable, so it
                # is not acked and the broker hands it out again.
                self.log.error("%s; the batch goes back to the broker", exc)
                self.room.wait(1.0)  # a journal that keeps failing must not spin
                return False
            parts.pop(0)
            waited = False
        return True
