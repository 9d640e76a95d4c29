"""Segregated stores: the primary holds `<cluster>/primary` while healthy; the backup covers for it.

Each instance consumes only its own broker into its own journal, so two active instances are
safe here: each store still has one consumer. The node therefore decides when the backup helps
out, not who may write. Each instance keeps its own epoch, `<cluster>/epoch-<name>`, bumped on
every activation, because each writes only its own reports and journal positions.
"""

import logging
import time
from collections.abc import Callable
from typing import Any

from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.protocol.states import WatchedEvent

from reporting.ha.contest import POLL_S
from reporting.ha.epoch import bump_epoch
from reporting.ha.pair import PairElection
from reporting.ha.roles import (
    Acquired,
    EpochTaken,
    HolderSeen,
    Policy,
    PrimaryBack,
    Released,
    Role,
    StoodDown,
)

log = logging.getLogger(__name__)


class _OwnEpoch(PairElection):
    """Each segregated instance drains its own journal whatever its role, and a drainer writes
    only under an epoch its instance holds: the epoch node is bumped once connected, and again
    whenever the fence refused the one held, so that a restarted standby drains at once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(policy=Policy.SEGREGATED, **kwargs)
        self.epoch_path = f"{self.cluster}/epoch-{self.name}"
        self.contest.relies_on(self.epoch_path)
        self.contest.relies_on(f"{self.cluster}/primary", ephemeral=True)
        self._epoch_needed = True

    def _fenced(self) -> None:
        self._epoch_needed = True

    def _take_own_epoch(self) -> None:
        if self.role is Role.ACTIVE:
            # The activation's epoch is held, and serves the drainer after standing down.
            self._epoch_needed = False
        if self._epoch_needed and self.client.connected:
            self._epoch_needed = False
            self._apply(EpochTaken(bump_epoch(self.client, self.epoch_path, self.fence_seen)))


class PrimaryElection(_OwnEpoch):
    """Active while `healthy()` holds and the primary node is ours; standby otherwise.

    A suspended connection changes nothing (the backup cannot take this broker's traffic); a lost
    session took the node with it, and it is created again once reconnected.
    """

    def __init__(self, *, healthy: Callable[[], bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.primary_path = f"{self.cluster}/primary"
        self._healthy = healthy
        # The session our node was created in; None while we hold no node.
        self._node_session: int | None = None
        self._waiting_logged = False

    def _waiting_for(self) -> str:
        return f"primary, to hold {self.primary_path} while healthy"

    def _is_healthy(self) -> bool:
        try:
            return bool(self._healthy())
        except Exception:  # a check that cannot tell is no sign of health
            log.exception("%s: health check failed", self.name)
            return False

    def _round(self) -> None:
        healthy = self._is_healthy()
        if not healthy:
            # Stand by first, give the node up second: the backup must not find it gone while
            # this instance is still consuming.
            self._apply(Released(f"unhealthy, giving {self.primary_path} up"))
        if not self.client.connected:
            self._wait()
            return
        session = self._session()
        if self._node_session is not None and self._node_session != session:
            log.info("%s: session lost; creating %s again", self.name, self.primary_path)
            self._node_session = None
        if not healthy:
            if self._node_session is not None:
                try:
                    self.client.delete(self.primary_path)
                except NoNodeError:
                    pass
                self._node_session = None
            self._take_own_epoch()
            self._wait()
            return
        if self._node_session is None:
            self._create_node(session)
        if self._node_session is not None:
            if self.role is Role.STANDBY:
                epoch = bump_epoch(self.client, self.epoch_path, self.fence_seen)
                self._apply(Acquired(epoch, f"healthy, holding {self.primary_path}"))
        self._take_own_epoch()
        self._wait()

    def _create_node(self, session: int) -> None:
        try:
            self.client.create(self.primary_path, self.name.encode(), ephemeral=True, makepath=True)
        except NodeExistsError:
            try:
                data, stat = self.client.get(self.primary_path)
            except NoNodeError:
                return  # gone meanwhile: create it next round
            client_id = self.client.client_id
            if client_id is None or stat.ephemeralOwner != client_id[0]:
                # Another session holds it: ours from before a restart, until it expires, or a
                # second primary by mistake. Wait for it to go.
                if not self._waiting_logged:
                    log.warning(
                        "%s: %s is held by %s of another session; waiting for it to go",
                        self.name,
                        self.primary_path,
                        data.decode(),
                    )
                    self._waiting_logged = True
                return
            # Our own create, whose answer the connection lost before it reached us.
        self._waiting_logged = False
        self._node_session = session


class BackupElection(_OwnEpoch):
    """Standby while the primary node exists; active once it has been gone for `grace_s`.

    When the node comes back while active, the server is told to drain first (a RoleChange
    STANDBY with `drain_first`); `role` stays ACTIVE until the server calls `stood_down()`. If the
    node goes away again before that, the server is told ACTIVE again, with the same epoch.
    While ZooKeeper cannot be reached, the role stays as it is and the grace period starts over.
    """

    def __init__(self, *, grace_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.primary_path = f"{self.cluster}/primary"
        self.grace_s = grace_s
        # Since when (monotonic) the node has been seen missing without a break.
        self._absent_since: float | None = None

    def _waiting_for(self) -> str:
        return f"backup, active once {self.primary_path} is gone for {self.grace_s:g} s"

    def stood_down(self) -> None:
        self._apply(StoodDown())

    def _round(self) -> None:
        if not self.client.connected:
            self._absent_since = None
            self._wait()
            return
        self._take_own_epoch()
        if self.client.exists(self.primary_path, watch=self._on_primary_event) is not None:
            try:
                data, _ = self.client.get(self.primary_path)
            except NoNodeError:
                return  # gone between the two calls: look again at once
            self._absent_since = None
            holder = data.decode() or None
            self._apply(PrimaryBack(holder))
            self._apply(HolderSeen(holder))
            self._wait()
            return
        now = time.monotonic()
        if self._absent_since is None:
            self._absent_since = now
            self._apply(HolderSeen(None))
        remaining_s = self._absent_since + self.grace_s - now
        if remaining_s > 0:
            self._wait(min(POLL_S, remaining_s))
            return
        if self.role is Role.ACTIVE:
            # Draining after the primary came back, and it went again: no new epoch.
            self._apply(Acquired(None, "primary gone again"))
        else:
            epoch = bump_epoch(self.client, self.epoch_path, self.fence_seen)
            self._apply(Acquired(epoch, f"primary gone for {self.grace_s:g} s"))
        self._wait()

    def _on_primary_event(self, event: WatchedEvent) -> None:
        self.contest.wake()
