"""One instance of a group: the group election decides which queues it owns; each owned queue
runs in a lane of its own (`lane.Lane`), the others stand by.

Same interface to the CLI and the HTTP endpoints as `server.Server`: `start`, `stop`, `status`,
`metrics`, `watch_refusals`.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from reporting.config import Config
from reporting.errors import BrokerError
from reporting.ha.group import GroupElection
from reporting.ha.pause import PauseDetector
from reporting.ha.roles import Role, RoleChange
from reporting.lane import Lane
from reporting.status.metrics import Metrics
from storage.errors import StaleEpoch

log = logging.getLogger(__name__)

# How often the database is probed while no lane drains.
PROBE_S = 2.0


class GroupServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.started_at = time.time()
        self._stopping = threading.Event()
        self.election = GroupElection(
            name=config.name,
            zookeeper=config.ha.zookeeper,
            cluster=config.ha.cluster,
            queues=config.broker.queues,
            session_timeout_s=config.ha.session_timeout_s,
            on_change=self._on_change,
            auth=config.ha.auth,
        )
        self.lanes = {
            queue: Lane(
                config,
                queue,
                metrics=self.metrics,
                epoch=lambda queue=queue: self.election.epoch_of(queue),
                on_fenced=lambda exc, queue=queue: self._fenced(queue, exc),
            )
            for queue in self.election.queues
        }
        self.pause = PauseDetector.for_session(
            config.name, config.ha.session_timeout_s, what="ownership"
        )
        self._probed: bool | None = None
        # Read when scraped; each lane's drainer would otherwise overwrite the others' figures.
        m = self.metrics
        m.database_up.set_function(lambda: 1 if self._database_up() else 0)
        m.broker_connected.set_function(lambda: 1 if self._broker_connected() else 0)
        m.active.set_function(lambda: 1 if self.election.owned() else 0)
        m.epoch.set_function(lambda: self.election.epoch)
        m.pending_records.set_function(lambda: self._pending()[0])
        m.pending_bytes.set_function(lambda: self._pending()[1])

    def watch_refusals(self, callback: Callable[[BrokerError], None]) -> None:
        """`callback` runs once the broker refuses this instance's credentials or certificate."""
        for lane in self.lanes.values():
            lane.consumer.on_refused = callback

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.pause.start()
        threading.Thread(target=self._probe, name="probe", daemon=True).start()
        self.election.start()

    def stop(self) -> None:
        """Stops every lane without acking anything unsaved, hands the queues over, then exits."""
        self._stopping.set()
        self.pause.stop()
        self.election.stop()
        for lane in self.lanes.values():
            lane.close()
        log.info("%s: stopped", self.config.name)

    # -- ownership ----------------------------------------------------------------------------

    def _on_change(self, queue: str, change: RoleChange) -> None:
        lane = self.lanes[queue]
        if change.role is Role.ACTIVE and not self._stopping.is_set():
            lane.activate(
                change.epoch,
                still_owner=lambda: self.election.role_of(queue) is Role.ACTIVE,
            )
            log.info("%s: owns %s (epoch %d)", self.config.name, queue, change.epoch)
        else:
            lane.stand_by(change.reason)

    def _fenced(self, queue: str, exc: StaleEpoch) -> None:
        self.lanes[queue].stand_by(f"fenced: {exc}")
        self.election.lost_fence(queue, exc.epoch)

    # -- health -------------------------------------------------------------------------------

    def _probe(self) -> None:
        lane = next(iter(self.lanes.values()))
        while True:
            if not any(lane.drainer.running for lane in self.lanes.values()):
                self._probed = lane.sink.probe()
            if self._stopping.wait(PROBE_S):
                return

    def _database_up(self) -> bool:
        drainers = [lane.drainer for lane in self.lanes.values() if lane.drainer.running]
        if drainers:
            return all(d.database_up for d in drainers)
        return bool(self._probed)

    def _broker_connected(self) -> bool:
        owned = [self.lanes[queue] for queue in self.election.owned()]
        return bool(owned) and all(lane.consumer.connected for lane in owned)

    def _pending(self) -> tuple[int, int]:
        # Only an owner drains a queue's journal, so only its owner knows what is pending there.
        records = size = 0
        for queue in self.election.owned():
            pending = self.lanes[queue].journal.pending
            records += pending.records
            size += pending.bytes
        return records, size

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        suspect = self.pause.suspect()
        queues: dict[str, dict[str, Any]] = {}
        for queue, lane in self.lanes.items():
            # Just resumed from a long pause: the queue may be gone already, and the ZooKeeper
            # client is about to say so.
            ours = self.election.role_of(queue) is Role.ACTIVE and not suspect
            queues[queue] = {
                "owner": self.config.name if ours else self._others(queue),
                "role": "active" if ours else "standby",
                "epoch": self.election.epoch_of(queue),
                "pending": lane.journal.pending.records if ours else None,
                "broker": ("connected" if lane.consumer.connected else "disconnected")
                if ours
                else None,
                "stored": lane.drainer.stored,
            }
        owned = [queue for queue, q in queues.items() if q["role"] == "active"]
        records, size = self._pending()
        return {
            "name": self.config.name,
            "mode": "group",
            "role": "active" if owned else "standby",
            "epoch": self.election.epoch,
            "holder": None,
            "owned": owned,
            "members": list(self.election.members),
            # Members configured with other queues than this one: fix their [broker] queues.
            "mismatched": list(self.election.mismatched),
            "queues": queues,
            "journal": {
                "pending": records,
                "pending_bytes": size,
                "dir": str(self.config.journal.dir),
                "paused": any(lane.intake.paused for lane in self.lanes.values()),
            },
            "database": "up" if self._database_up() else "down",
            "broker": "connected" if self._broker_connected() else "disconnected",
            "stored": sum(lane.drainer.stored for lane in self.lanes.values()),
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    def _others(self, queue: str) -> str | None:
        owner = self.election.owner_of(queue)
        return None if owner == self.config.name else owner
