"""One Reporting Server instance: the election decides the role, the role decides what runs.

- active: the consumer takes reports from the broker into the journal; the drainer stores them.
- standby: no consumer. In segregated mode the drainer keeps draining this instance's own journal;
  in shared mode only the active drains the shared journal.

Role changes arrive from the election's own thread, one at a time, so this class needs no lock of
its own around them.
"""

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from reporting.config import Config
from reporting.errors import BrokerError
from reporting.ha import Role, RoleChange, make_election
from reporting.ha.pause import PauseDetector
from reporting.pipeline import Drainer, Intake, open_journal
from reporting.status.metrics import Metrics
from reporting.wire.connection import reachable
from reporting.wire.consumer import Consumer
from storage.database import Sink
from storage.errors import StaleEpoch

log = logging.getLogger(__name__)

# How long a new active lets the drainer catch up with the journal before it consumes.
CATCH_UP_S = 30.0
# Segregated backup standing down: the broker counts as drained after this long without a message.
BROKER_IDLE_S = 1.0
# Segregated backup in standby: how often it looks for reports left in its own broker.
SWEEP_S = 5.0
# How often the database is probed while no drainer reports on it.
PROBE_S = 2.0


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.started_at = time.time()
        self._journal = open_journal(config, config.journal.dir, epoch=0, metrics=self.metrics)
        self.sink = Sink(
            config.database.url, cluster=config.fence_cluster, journal=config.journal_key
        )
        self._room = threading.Event()
        self.drainer = Drainer(
            lambda: self._journal,
            self.sink,
            batch_records=config.database.batch_records,
            epoch=lambda: self.election.epoch,
            metrics=self.metrics,
            on_fenced=self._fenced,
            on_room=self._room.set,
            name=config.name,
        )
        self.intake = Intake(
            lambda: self._journal,
            config.broker,
            metrics=self.metrics,
            room=self._room,
            appended=self.drainer.wake,
            may_continue=lambda: self.consuming,
        )
        self.consumer = Consumer(config.broker, self.intake, name=config.name)
        self.consuming = False
        self._consumer_lock = threading.RLock()
        self.election = make_election(
            mode=config.ha.mode,
            name=config.name,
            role=config.ha.role,
            zookeeper=config.ha.zookeeper,
            cluster=config.ha.cluster,
            session_timeout_s=config.ha.session_timeout_s,
            grace_s=config.ha.grace_s,
            healthy=self._healthy,
            on_change=self._on_role,
            auth=config.ha.auth,
        )
        self._stopping = threading.Event()
        self.pause = PauseDetector.for_session(
            config.name, config.ha.session_timeout_s, what="role"
        )
        self._probed: bool | None = None
        # Read when scraped, from the same state /status shows.
        self.metrics.database_up.set_function(lambda: 1 if self._database_up() else 0)
        self.metrics.broker_connected.set_function(lambda: 1 if self.consumer.connected else 0)

    def watch_refusals(self, callback: Callable[[BrokerError], None]) -> None:
        """`callback` runs once the broker refuses this instance's credentials or certificate."""
        self.consumer.on_refused = callback

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.pause.start()
        threading.Thread(target=self._probe, name="probe", daemon=True).start()
        if self.config.ha.mode == "segregated":
            # Every instance drains its own journal, whatever its role.
            self.drainer.start()
            if self.config.ha.role == "backup":
                threading.Thread(target=self._sweep, name="sweep", daemon=True).start()
        self.election.start()

    def stop(self) -> None:
        """Stops consuming without acking anything unsaved, hands the role over, then exits."""
        self._stopping.set()
        self.pause.stop()
        self._stop_consuming("shutting down")
        self.election.stop()
        self.drainer.stop()
        self._journal.close()
        self.sink.close()
        log.info("%s: stopped", self.config.name)

    # -- roles --------------------------------------------------------------------------------

    def _on_role(self, change: RoleChange) -> None:
        if self._stopping.is_set():
            return
        self.metrics.epoch.set(change.epoch)
        if change.role is Role.ACTIVE:
            self.metrics.active.set(1)
            self._activate(change.epoch)
        elif change.drain_first:
            self._drain_broker_then_stand_down()
        else:
            self.metrics.active.set(0)
            self._stop_consuming(change.reason)
            if self.config.ha.mode == "shared":
                self.drainer.stop()

    def _activate(self, epoch: int) -> None:
        # Our own segments carry the epoch under which they were written: the journal is
        # reopened for it, with nothing reading or appending meanwhile (a segregated backup's
        # standby sweep may be consuming, and its drainer always runs).
        self._stop_consuming("taking the role")
        self.drainer.stop()
        self._journal.close()
        self._journal = open_journal(
            self.config, self.config.journal.dir, epoch=epoch, metrics=self.metrics
        )
        self.drainer.start()
        # Reports journalled by an earlier holder go in first, unless the database is down: then
        # the journal buffers both and the drainer catches up later.
        self.drainer.wait_caught_up(CATCH_UP_S)
        if self.election.role is Role.ACTIVE:
            self._start_consuming()

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
                log.info("%s: consumer stopped (%s)", self.config.name, reason)

    def _sweep(self) -> None:
        # A segregated backup in standby still owns its broker: producers that failed over to it
        # may go on sending there for a while after it stood down. It takes what arrives, every
        # few seconds, so that nothing is stranded in its store; its role stays standby.
        while not self._stopping.wait(SWEEP_S):
            if self.election.role is not Role.STANDBY or self.consuming:
                continue
            before = self.intake.records
            self._start_consuming()
            self.consumer.idle_for(BROKER_IDLE_S)
            if self.election.role is Role.STANDBY:
                self._stop_consuming("standby sweep of the own broker done")
            taken = self.intake.records - before
            if taken:
                log.info(
                    "%s: standby sweep took %d reports left in the own broker",
                    self.config.name,
                    taken,
                )

    def _drain_broker_then_stand_down(self) -> None:
        # Segregated backup with the primary back: what producers sent here during the outage is
        # still in this broker; take it all, then stop.
        if self.consuming:
            self.consumer.idle_for(BROKER_IDLE_S)
        self.metrics.active.set(0)
        self._stop_consuming("primary is back; own broker drained")
        self.election.stood_down()

    def _fenced(self, exc: StaleEpoch) -> None:
        self._stop_consuming(f"fenced: {exc}")
        self.election.lost_fence(exc.epoch)

    def _probe(self) -> None:
        # /status answers at once: while no drainer runs (a shared-mode standby), the database's
        # health comes from this probe, not from a connection made inside the request.
        while True:
            if not self.drainer.running:
                self._probed = self.sink.probe()
            if self._stopping.wait(PROBE_S):
                return

    def _database_up(self) -> bool:
        # The drainer knows from its last write; while none runs, the background probe tells.
        return bool(self.drainer.database_up if self.drainer.running else self._probed)

    def _healthy(self) -> bool:
        # The segregated primary holds its node only while it can do its job.
        return self._broker_reachable() and os.access(self.config.journal.dir, os.W_OK)

    def _broker_reachable(self) -> bool:
        return self.consumer.connected or reachable(self.config.broker.hosts, timeout_s=0.5)

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        pending = self._journal.pending
        # A shared-mode standby does not drain the shared journal, so it cannot tell what of it
        # is stored: the active's /status has the figure.
        own_figures = self.config.ha.mode != "shared" or self.drainer.running
        role = self.election.role
        if role is Role.ACTIVE and self.config.ha.mode != "standalone" and self.pause.suspect():
            # Just resumed from a pause longer than half the session: the role may be gone
            # already, and the ZooKeeper client is about to say so.
            role = Role.STANDBY
        return {
            "name": self.config.name,
            "mode": self.config.ha.mode,
            "role": str(role),
            "epoch": self.election.epoch,
            "holder": self.election.holder,
            "journal": {
                "pending": pending.records if own_figures else None,
                "pending_bytes": pending.bytes if own_figures else None,
                "dir": str(self.config.journal.dir),
                "paused": self.intake.paused,
            },
            "database": "up" if self._database_up() else "down",
            "broker": "connected" if self.consumer.connected else "disconnected",
            "broker_host": self.consumer.connected_host,
            "stored": self.drainer.stored,
            "uptime_s": round(time.time() - self.started_at, 1),
        }
