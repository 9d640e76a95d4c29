"""One Reporting Server instance: its election decides the role of each lane, the role decides what
the lane runs (`lane.Lane`).

Standalone, shared and segregated instances have one lane over all queues, whose role is the
instance's; a group instance has a lane per queue, whose role is the ownership of that queue.
Role changes reach `_on_role` from the election's delivery threads, one at a time per lane.
"""

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from reporting.config import Config, database_password
from reporting.errors import BrokerError
from reporting.ha import Role, RoleChange, make_election
from reporting.ha.group import GroupElection
from reporting.ha.pause import PauseDetector
from reporting.lane import Lane
from reporting.status.metrics import Metrics
from reporting.wire.connection import reachable
from storage.database import Sink
from storage.errors import StaleEpoch
from storage.reports import kind_of

log = logging.getLogger(__name__)

# How often the database is probed while no drainer reports on it.
PROBE_S = 2.0


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.group = config.ha.mode == "group"
        self.metrics = Metrics()
        self.started_at = time.time()
        self._stopping = threading.Event()
        # One engine per process; each lane's sink is a view of it with the lane's fence and key.
        self.sink = Sink(
            config.database.url,
            cluster=config.fence_cluster,
            journal=config.journal_key,
            password=database_password(config.database),
        )
        if self.group:
            self.election: Any = GroupElection(
                name=config.name,
                zookeeper=config.ha.zookeeper,
                cluster=config.ha.cluster,
                queues=config.broker.queues,
                session_timeout_s=config.ha.session_timeout_s,
                on_change=self._on_role,
                auth=config.ha.auth,
            )
        else:
            self.election = make_election(
                mode=config.ha.mode,
                name=config.name,
                role=config.ha.role,
                zookeeper=config.ha.zookeeper,
                cluster=config.ha.cluster,
                session_timeout_s=config.ha.session_timeout_s,
                grace_s=config.ha.grace_s,
                healthy=self._healthy,
                on_change=lambda change: self._on_role(config.name, change),
                auth=config.ha.auth,
            )
        self.lanes: dict[str, Lane] = {
            spec.id: Lane(
                config,
                spec,
                name=f"{config.name}-{kind_of(spec.id)}" if self.group else config.name,
                sink=self.sink.view(cluster=spec.fence, journal=spec.key),
                metrics=self.metrics,
                role=lambda lane=spec.id: self._role_of(lane),
                on_fenced=lambda exc, lane=spec.id: self._fenced(lane, exc),
                stood_down=self.election.stood_down,
            )
            for spec in config.lanes
        }
        self.pause = PauseDetector.for_session(
            config.name, config.ha.session_timeout_s, what="ownership" if self.group else "role"
        )
        self._probed: bool | None = None
        # Read when scraped, from the same state /status shows.
        m = self.metrics
        m.database_up.set_function(lambda: 1 if self._database_up() else 0)
        m.broker_connected.set_function(lambda: 1 if self._broker_connected() else 0)
        m.active.set_function(lambda: 1 if self._active_lanes() else 0)
        m.epoch.set_function(lambda: self.election.epoch)
        m.pending_records.set_function(lambda: self._pending()[0])
        m.pending_bytes.set_function(lambda: self._pending()[1])
        if self.group:
            for queue in self.lanes:
                m.queue_owned.labels(queue).set_function(
                    lambda queue=queue: 1 if self._role_of(queue) is Role.ACTIVE else 0
                )

    def watch_refusals(self, callback: Callable[[BrokerError], None]) -> None:
        """`callback` runs once the broker refuses this instance's credentials or certificate."""
        for lane in self.lanes.values():
            lane.consumer.on_refused = callback

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.pause.start()
        threading.Thread(target=self._probe, name="probe", daemon=True).start()
        for lane in self.lanes.values():
            lane.start()
        self.election.start()

    def stop(self) -> None:
        """Stops consuming without acking anything unsaved, hands the role over, then exits."""
        self._stopping.set()
        self.pause.stop()
        # The election stands every lane by first (in group mode each queue on its own delivery
        # thread, side by side) and waits for it, then closes its session: the hand-over.
        self.election.stop()
        for lane in self.lanes.values():
            lane.close()
        self.sink.close()
        log.info("%s: stopped", self.config.name)

    # -- roles --------------------------------------------------------------------------------

    def _role_of(self, lane: str) -> Role:
        return self.election.role_of(lane) if self.group else self.election.role

    def _on_role(self, lane: str, change: RoleChange) -> None:
        if self._stopping.is_set() and change.role is Role.ACTIVE:
            return
        self.lanes[lane].on_role(change)
        if self.group and change.role is Role.ACTIVE and self._role_of(lane) is Role.ACTIVE:
            log.info(
                "%s: owns %s (epoch %d)",
                self.config.name,
                lane,
                change.epoch,
                extra={"queue": lane, "epoch": change.epoch},
            )

    def _fenced(self, lane: str, exc: StaleEpoch) -> None:
        self.lanes[lane].stand_by(f"fenced: {exc}")
        if self.group:
            self.election.lost_fence(lane, exc.epoch, exc.fence)
        else:
            self.election.lost_fence(exc.epoch, exc.fence)

    def _active_lanes(self) -> list[str]:
        return [lane for lane in self.lanes if self._role_of(lane) is Role.ACTIVE]

    # -- health -------------------------------------------------------------------------------

    def _probe(self) -> None:
        # /status answers at once: while no drainer runs (a shared-mode standby), the database's
        # health comes from this probe, not from a connection made inside the request.
        while True:
            if not any(lane.drains for lane in self.lanes.values()):
                self._probed = self.sink.probe()
            if self._stopping.wait(PROBE_S):
                return

    def _database_up(self) -> bool:
        # The drainers know from their last write; while none runs, the background probe tells.
        drainers = [lane.drainer for lane in self.lanes.values() if lane.drains]
        if drainers:
            return all(d.database_up for d in drainers)
        return bool(self._probed)

    def _broker_connected(self) -> bool:
        if not self.group:
            return all(lane.consumer.connected for lane in self.lanes.values())
        owned = [self.lanes[lane] for lane in self._active_lanes()]
        return bool(owned) and all(lane.consumer.connected for lane in owned)

    def _healthy(self) -> bool:
        # The segregated primary holds its node only while it can do its job.
        return self._broker_reachable() and os.access(self.config.journal.dir, os.W_OK)

    def _broker_reachable(self) -> bool:
        return any(lane.consumer.connected for lane in self.lanes.values()) or reachable(
            self.config.broker.hosts, timeout_s=0.5
        )

    def _reads_journal(self, lane: str) -> bool:
        # A journal on shared storage is known only to the one who drains it: a standby cannot
        # tell what of it is stored, the active's /status has the figure.
        return self.config.ha.mode != "shared" or self.lanes[lane].drains

    def _pending(self) -> tuple[int, int]:
        records = size = 0
        for lane_id, lane in self.lanes.items():
            if self.group and self._role_of(lane_id) is not Role.ACTIVE:
                continue
            pending = lane.journal.pending
            records += pending.records
            size += pending.bytes
        return records, size

    # -- for the service manager (reporting.notify) -------------------------------------------

    @property
    def joined(self) -> bool:
        """The journals are open (since __init__) and the election has run its first round."""
        return bool(self.election.joined)

    @property
    def role(self) -> str:
        """`active` while the instance (a group member: for any queue) is active, else `standby`."""
        return "active" if self._active_lanes() else "standby"

    def describe_role(self) -> str:
        """One line for systemd's STATUS=: the role, the epoch, the holder or the queues owned."""
        if self.election.error:
            return f"cannot take part: {self.election.error}"
        if self.group:
            owned = self._active_lanes()
            return f"active, owns {', '.join(owned)}" if owned else "standby, owns no queue"
        role = self.election.role
        if role is Role.ACTIVE:
            return f"active, epoch {self.election.epoch}"
        holder = self.election.holder
        if holder == self.config.name:
            # It holds the lock and is taking the role up: not active yet, and no other is.
            return "standby, taking the role"
        return f"standby, active is {holder}" if holder else "standby"

    def working(self, within_s: float) -> bool:
        """Every running consumer thread has shown progress in the last `within_s` seconds."""
        return all(lane.consumer.stalled_for() <= within_s for lane in self.lanes.values())

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self._group_status() if self.group else self._pair_status()

    def _common(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "mode": self.config.ha.mode,
            "database": "up" if self._database_up() else "down",
            # Why it is down, as the database driver said it (no password in it).
            "database_error": None if self._database_up() else self.sink.last_error,
            "broker": "connected" if self._broker_connected() else "disconnected",
            "stored": sum(lane.drainer.stored for lane in self.lanes.values()),
            # Why this instance cannot take part in its election (a refused ZooKeeper login).
            "election_error": self.election.error,
            "drainers": {lane_id: lane.drainer_status() for lane_id, lane in self.lanes.items()},
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    def _pair_status(self) -> dict[str, Any]:
        (lane,) = self.lanes.values()
        pending = lane.journal.pending
        own = self._reads_journal(lane.spec.id)
        role = self.election.role
        if role is Role.ACTIVE and self.config.ha.mode != "standalone" and self.pause.suspect():
            # Just resumed from a pause longer than half the session: the role may be gone
            # already, and the ZooKeeper client is about to say so.
            role = Role.STANDBY
        return {
            **self._common(),
            "role": str(role),
            "epoch": self.election.epoch,
            "holder": self.election.holder,
            "journal": {
                "pending": pending.records if own else None,
                "pending_bytes": pending.bytes if own else None,
                "dir": str(self.config.journal.dir),
                "paused": lane.intake.paused,
            },
            "broker_host": lane.consumer.connected_host,
        }

    def _group_status(self) -> dict[str, Any]:
        suspect = self.pause.suspect()
        queues: dict[str, dict[str, Any]] = {}
        for queue, lane in self.lanes.items():
            # Just resumed from a long pause: the queue may be gone already, and the ZooKeeper
            # client is about to say so.
            ours = self._role_of(queue) is Role.ACTIVE and not suspect
            owner = self.election.owner_of(queue)
            queues[queue] = {
                "owner": self.config.name
                if ours
                else (None if owner == self.config.name else owner),
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
            **self._common(),
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
        }
