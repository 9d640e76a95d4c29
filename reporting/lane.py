"""A lane: one journal with its consumer, intake and drainer, run under the role its election gives.

Standalone, shared and segregated instances have one lane over all their queues; a group instance
has one per queue (the journal folder `<journal.dir>/<queue>`, fenced in the queue's own domain).
What differs between the modes is the lane's `Policy`:

- shared and group: only the role's holder drains the journal (it is shared storage);
- segregated: the drainer runs whatever the role, under the epoch the instance holds for its own
  journal, and the backup sweeps its own broker while standby and drains it before standing down.

Role changes reach a lane one at a time, from its election's delivery thread.
"""

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reporting.config import Config, LaneSpec
from reporting.ha import Role, RoleChange
from reporting.pipeline import Drainer, Intake, open_journal
from reporting.status.metrics import Metrics
from reporting.wire.consumer import Consumer
from storage.database import Sink
from storage.errors import StaleEpoch
from storage.journal import Journal

log = logging.getLogger(__name__)

# How long a new active lets the drainer catch up with the journal before it consumes.
CATCH_UP_S = 30.0
# Segregated backup standing down: the broker counts as drained after this long without a message.
BROKER_IDLE_S = 1.0
# Segregated backup in standby: how often it looks for reports left in its own broker.
SWEEP_S = 5.0


@dataclass(frozen=True)
class Policy:
    """What a lane does beyond 'the active consumes and drains'."""

    # The drainer runs in standby too (the journal is the instance's own).
    always_drain: bool = False
    # In standby, take what producers still send to the own broker, every SWEEP_S.
    sweep: bool = False

    @classmethod
    def of(cls, config: Config) -> "Policy":
        if config.ha.mode == "segregated":
            return cls(always_drain=True, sweep=config.ha.role == "backup")
        return cls()


class Lane:
    def __init__(
        self,
        config: Config,
        spec: LaneSpec,
        *,
        name: str,
        sink: Sink,
        metrics: Metrics,
        role: Callable[[], Role],
        on_fenced: Callable[[StaleEpoch], None],
        stood_down: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.name = name
        self.policy = Policy.of(config)
        self._role = role
        self._stood_down = stood_down
        self._journal = open_journal(config, spec.dir, epoch=0, metrics=metrics)
        self.sink = sink
        room = threading.Event()
        self.drainer = Drainer(
            lambda: self._journal,
            sink,
            batch_records=config.database.batch_records,
            metrics=metrics,
            on_fenced=on_fenced,
            on_room=room.set,
            name=name,
        )
        broker = dataclasses.replace(config.broker, queues=spec.queues)
        self.intake = Intake(
            lambda: self._journal,
            broker,
            metrics=metrics,
            room=room,
            appended=self.drainer.wake,
            may_continue=self._may_continue,
        )
        self.consumer = Consumer(broker, self.intake, name=name)
        self.consuming = False
        self._consumer_lock = threading.RLock()
        self._stopping = threading.Event()

    def _may_continue(self) -> bool:
        # The intake asks this, on the consumer thread, every 0.5 s while it waits for journal
        # room: waiting there is the thread at work, not wedged (the systemd watchdog).
        self.consumer.beat()
        return self.consuming

    @property
    def journal(self) -> Journal:
        return self._journal

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.policy.sweep:
            threading.Thread(target=self._sweep, name=f"{self.name}-sweep", daemon=True).start()

    def close(self) -> None:
        self._stopping.set()
        self._stop_consuming("stopping")
        self.drainer.stop()
        self._journal.close()

    # -- roles --------------------------------------------------------------------------------

    def on_role(self, change: RoleChange) -> None:
        """The one entry point for the lane's role changes."""
        if self._stopping.is_set():
            return
        if change.role is Role.ACTIVE:
            self._activate(change.epoch)
        elif change.drain_first:
            self._drain_broker_then_stand_down()
        else:
            self.stand_by(change.reason)
            if self.policy.always_drain and 0 < change.epoch != self.drainer.epoch:
                # A segregated standby drains its own journal under the epoch it holds for it.
                self._restart(change.epoch)

    def _activate(self, epoch: int) -> None:
        if epoch != self.drainer.epoch or not self.drainer.running:
            self._restart(epoch)
            # Reports journalled by an earlier holder go in first, unless the database is down:
            # then the journal buffers both and the drainer catches up later.
            self.drainer.wait_caught_up(CATCH_UP_S)
        if self._role() is Role.ACTIVE:
            self._start_consuming()

    def _restart(self, epoch: int) -> None:
        # The lane's own segments carry the epoch under which they were written: the journal is
        # reopened for it, with nothing reading or appending meanwhile (a segregated backup's
        # standby sweep may be consuming, and its drainer always runs).
        self._stop_consuming(f"taking epoch {epoch}")
        self.drainer.stop()
        self._journal = self._journal.reopen(epoch=epoch)
        self.drainer.start(epoch)

    def _start_consuming(self) -> None:
        with self._consumer_lock:
            if not self.consuming and not self._stopping.is_set():
                self.consuming = True
                self.consumer.start()

    def _stop_consuming(self, reason: str) -> None:
        with self._consumer_lock:
            if self.consuming:
                self.consuming = False
                self.consumer.stop()
                log.info(
                    "%s: consumer stopped (%s)",
                    self.name,
                    reason,
                    extra={"queue": ",".join(self.spec.queues)},
                )

    def _sweep(self) -> None:
        # A segregated backup in standby still owns its broker: producers that failed over to it
        # may go on sending there for a while after it stood down. It takes what arrives, every
        # few seconds, so that nothing is stranded in its store; its role stays standby. Only
        # while its drainer runs: what it journals must reach the database.
        while not self._stopping.wait(SWEEP_S):
            if self._role() is not Role.STANDBY or self.consuming or not self.drainer.running:
                continue
            before = self.intake.records
            self._start_consuming()
            self.consumer.idle_for(BROKER_IDLE_S)
            if self._role() is Role.STANDBY:
                self._stop_consuming("standby sweep of the own broker done")
            taken = self.intake.records - before
            if taken:
                log.info(
                    "%s: standby sweep took %d reports left in the own broker", self.name, taken
                )

    def _drain_broker_then_stand_down(self) -> None:
        # Segregated backup with the primary back: what producers sent here during the outage is
        # still in this broker; take it all, then stop.
        if self.consuming:
            self.consumer.idle_for(BROKER_IDLE_S)
        self._stop_consuming("primary is back; own broker drained")
        self._stood_down()

    def stand_by(self, reason: str) -> None:
        """Stop consuming at once (nothing unsaved acked); the drainer as the policy says."""
        self._stop_consuming(reason)
        if not self.policy.always_drain:
            self.drainer.stop()

    # -- status -------------------------------------------------------------------------------

    @property
    def drains(self) -> bool:
        return self.drainer.running

    def drainer_status(self) -> dict[str, Any]:
        running = self.drainer.running
        return {
            "state": "running" if running else "stopped",
            "epoch": self.drainer.epoch,
            "reason": None if running else self.drainer.stopped_because,
        }
