"""One queue of a group instance: its journal folder, consumer, drainer and fence.

A lane is shared mode for one queue. The journal folder `<journal.dir>/<queue>` is on storage
every instance of the group reaches; the queue's owner consumes the queue into it and drains it;
the database fences the lane's writes with the queue's epoch, in the fencing domain
`<cluster>/queues/<queue>`, which also keys the lane's journal positions.
"""

import dataclasses
import logging
import threading
from collections.abc import Callable

from reporting.config import Config
from reporting.ha.group import queue_key
from reporting.pipeline import Drainer, Intake, open_journal
from reporting.status.metrics import Metrics
from reporting.wire.consumer import Consumer
from storage.database import Sink
from storage.errors import StaleEpoch
from storage.journal import Journal

log = logging.getLogger(__name__)

# How long a new owner lets the drainer catch up with the queue's journal before it consumes.
CATCH_UP_S = 30.0


class Lane:
    def __init__(
        self,
        config: Config,
        queue: str,
        *,
        metrics: Metrics,
        epoch: Callable[[], int],
        on_fenced: Callable[[StaleEpoch], None],
    ) -> None:
        self.queue = queue
        self.name = f"{config.name}-{queue.rpartition('.')[2]}"
        self.key = queue_key(config.ha.cluster, queue)
        self.dir = config.journal.dir / queue
        self._config = config
        self._metrics = metrics
        self._journal = open_journal(config, self.dir, epoch=0, metrics=metrics)
        self.sink = Sink(config.database.url, cluster=self.key, journal=self.key)
        room = threading.Event()
        self.drainer = Drainer(
            lambda: self._journal,
            self.sink,
            batch_records=config.database.batch_records,
            epoch=epoch,
            metrics=metrics,
            on_fenced=on_fenced,
            on_room=room.set,
            name=self.name,
        )
        broker = dataclasses.replace(config.broker, queues=(queue,))
        self.intake = Intake(
            lambda: self._journal,
            broker,
            metrics=metrics,
            room=room,
            appended=self.drainer.wake,
            may_continue=lambda: self.consuming,
        )
        self.consumer = Consumer(broker, self.intake, name=self.name)
        self.consuming = False
        self._consumer_lock = threading.Lock()

    @property
    def journal(self) -> Journal:
        return self._journal

    def activate(self, epoch: int, *, still_owner: Callable[[], bool]) -> None:
        """Take the queue at `epoch`: drain what earlier owners journalled, then consume."""
        self._stop_consuming("taking the queue")
        self.drainer.stop()
        # The lane's own segments carry the epoch under which they were written.
        self._journal.close()
        self._journal = open_journal(self._config, self.dir, epoch=epoch, metrics=self._metrics)
        self.drainer.start()
        # Unless the database is down: then the journal buffers both, and the drain catches up.
        self.drainer.wait_caught_up(CATCH_UP_S)
        if still_owner():
            with self._consumer_lock:
                if not self.consuming:
                    self.consuming = True
                    self.consumer.start()

    def stand_by(self, reason: str) -> None:
        """Stop consuming (nothing unsaved acked) and draining: the next owner drains the rest."""
        self._stop_consuming(reason)
        self.drainer.stop()

    def close(self) -> None:
        self.stand_by("stopping")
        self._journal.close()
        self.sink.close()

    def _stop_consuming(self, reason: str) -> None:
        with self._consumer_lock:
            if self.consuming:
                self.consuming = False
                self.consumer.stop()
                log.info("%s: consumer stopped (%s)", self.name, reason)
