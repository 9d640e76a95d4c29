"""What every ZooKeeper election shares: the kazoo session, the roles and the contest thread.

Three kinds of thread touch an election: kazoo's connection thread (the state listener), the
contest thread (`_contest`, the only one that talks to ZooKeeper for the election) and the
server's threads (`lost_fence`, `stood_down`, the role properties). All of them change the roles
only through `_apply`, which holds a mutex for the in-memory step alone: never across a ZooKeeper
call, or the listener would stall the connection thread that call waits on.
"""

import logging
import threading
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException
from kazoo.retry import KazooRetry
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl

from reporting.ha.delivery import Delivery
from reporting.ha.roles import (
    Connected,
    Event,
    Fenced,
    Policy,
    Role,
    RoleChange,
    Roles,
    SessionLost,
    Started,
    Stopping,
    Suspended,
    describe,
)

log = logging.getLogger(__name__)

# How often the contest thread looks again when nothing woke it.
POLL_S = 0.5
# How long stop() waits for the server's callback of the last STANDBY before closing the session.
STOP_DELIVERY_S = 10.0


_STATES = {
    KazooState.SUSPENDED: "connection suspended",
    KazooState.LOST: "session lost",
    KazooState.CONNECTED: "connected",
}


def make_client(
    zookeeper: str, *, session_timeout_s: float, auth: tuple[str, str] | None = None
) -> KazooClient:
    """A kazoo client that reconnects forever; with `auth`, every node it creates is that digest
    user's alone (all instances of a pair or group use the same user)."""
    access: dict[str, Any] = {}
    if auth is not None:
        user, password = auth
        access = {
            "auth_data": [("digest", f"{user}:{password}")],
            "default_acl": [make_digest_acl(user, password, all=True)],
        }
    return KazooClient(
        hosts=zookeeper,
        timeout=session_timeout_s,
        # Reconnect forever, and soon enough to save a session that is still alive.
        connection_retry=KazooRetry(max_tries=-1, delay=0.05, max_delay=0.5, max_jitter=0.1),
        **access,
    )


def open_parents(client: KazooClient, cluster: str) -> None:
    """Create the folders above `cluster` open to all: they may hold other clusters with other
    credentials (a node with children cannot be deleted), only the cluster path is closed."""
    parent = cluster.rsplit("/", 1)[0]
    if parent:
        client.ensure_path(parent, acl=OPEN_ACL_UNSAFE)


class ZooKeeperElection:
    def __init__(
        self,
        *,
        name: str,
        zookeeper: str,
        cluster: str,
        session_timeout_s: float,
        on_change: Callable[[RoleChange], None],
        policy: Policy,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.name = name
        self.cluster = cluster.rstrip("/")
        self._roles = Roles(name, policy=policy)
        self._mutex = threading.Lock()
        self._delivery = Delivery(name, on_change)
        # Set whenever the contest thread has something new to look at.
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.client = make_client(zookeeper, session_timeout_s=session_timeout_s, auth=auth)
        # With credentials, the folders above the cluster path are made open on the first round.
        self._open_parents = auth is not None and self.cluster.rsplit("/", 1)[0] != ""
        self.client.add_listener(self._on_state)
        self._thread = threading.Thread(target=self._run, name=f"{name}-election", daemon=True)

    # Readable from any thread: each is one attribute read of the roles.

    @property
    def role(self) -> Role:
        return self._roles.role

    @property
    def epoch(self) -> int:
        return self._roles.epoch

    @property
    def holder(self) -> str | None:
        return self._roles.holder

    def start(self) -> None:
        self._delivery.start()
        self._apply(Started(self._waiting_for()))
        # Asynchronous: a ZooKeeper that is down at start is waited for, not an error.
        self.client.start_async()
        self._thread.start()

    def stop(self) -> None:
        """Stand by, let the server act on it, then close the session.

        Closing the session deletes its ephemeral nodes on the server at once, the lock node and
        the primary node alike: that is the hand-over. If ZooKeeper is unreachable they expire with
        the session instead.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread.ident is None:  # never started
            self.client.close()
            return
        self._interrupt()
        self._wake.set()
        self._apply(Stopping())
        self._delivery.wait_delivered(STOP_DELIVERY_S)
        # The contest thread may sit in a ZooKeeper call that waits for a reconnect; closing the
        # client fails that call, so join it only afterwards.
        self.client.stop()
        self.client.close()
        self._thread.join(POLL_S * 4)
        self._delivery.stop(POLL_S * 4)

    def lost_fence(self, epoch: int | None = None) -> None:
        """The database rejected a write of `epoch` (None: the current one): stand by now.

        A rejection of an older epoch than the current one is about a role given up since, and
        changes nothing.
        """
        with self._mutex:
            # Checked and applied under one hold: a newer activation cannot slip in between.
            if epoch is not None and epoch < self._roles.epoch:
                return
            self._transition(Fenced())
        self._fenced()
        self._wake.set()

    def stood_down(self) -> None:
        """Only the segregated backup drains before standing down; elsewhere nothing to do."""

    # For the subclasses.

    def _waiting_for(self) -> str:
        """What a standby instance of this kind waits for, for the first log line."""
        raise NotImplementedError

    def _contest(self) -> None:
        """One round of the contest, run again and again on the contest thread."""
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Make a blocking step of `_contest` return soon (stop() was called)."""

    def _fenced(self) -> None:
        """Note for the contest thread that the role was lost to the fence."""

    def _apply(self, event: Event) -> RoleChange | None:
        with self._mutex:
            return self._transition(event)

    def _transition(self, event: Event) -> RoleChange | None:
        # Called with the mutex held, so that the order of delivery is that of the transitions.
        change = self._roles.apply(event)
        if change is not None:
            log.info("%s", describe(self.name, change))
            self._delivery.put(change)
        return change

    def _session(self) -> int:
        with self._mutex:
            return self._roles.session

    def _wait(self, timeout_s: float = POLL_S) -> None:
        self._wake.wait(timeout_s)

    def _on_state(self, state: KazooState) -> None:
        # kazoo's connection thread: record and wake, never block.
        if state == KazooState.SUSPENDED:
            change = self._apply(Suspended())
        elif state == KazooState.LOST:
            change = self._apply(SessionLost())
        else:
            change = self._apply(Connected())
        if change is None and not self._stopping.is_set():
            level = logging.INFO if state == KazooState.CONNECTED else logging.WARNING
            log.log(level, "%s: zookeeper %s; role %s kept", self.name, _STATES[state], self.role)
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            # Cleared before looking, so a wake-up during the round is not lost.
            self._wake.clear()
            try:
                if self._open_parents:
                    open_parents(self.client, self.cluster)
                    self._open_parents = False
                self._contest()
            except KazooException as exc:
                # Mostly the connection dropping mid-round; the listener has seen it too.
                log.debug("%s: election round interrupted: %r", self.name, exc)
                self._wait()
            except Exception:  # the contest must go on whatever one round ran into
                log.exception("%s: election round failed", self.name)
                self._wait()
