"""Group mode: more than two instances on one cluster path, each queue owned by one of them.

Under the cluster path:

    members/<name>          ephemeral, one per live instance, holding its queue list
    queues/<queue>/owner    ephemeral, the queue's lock: its owner's name, gone with its session
    queues/<queue>/epoch    the queue's fence, bumped by every new owner

Each instance watches the member list and the owner nodes and computes the assignment from them
(`assignment.assign`); the same view gives every instance the same answer. For each queue it then
gives up an owner node it should no longer hold (once the server has stopped that queue) or tries
to create the owner node of a queue it should own. The owner node, not the assignment, decides who
owns a queue: while a queue moves, the new owner waits until the old one has deleted its node, or
until the old one's session has expired. A queue therefore never has two owners, and a new owner's
epoch fences any write the old one still attempts.

Every queue has a role state machine of its own (`roles.Roles` with the shared policy: the
connection suspended means standing by at once) and a `Delivery` thread, so that queues are
handed over side by side.
"""

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kazoo.client import KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from reporting.config import queue_key
from reporting.ha.assignment import assign
from reporting.ha.delivery import Delivery
from reporting.ha.epoch import bump_epoch
from reporting.ha.roles import (
    Acquired,
    Confirmed,
    Connected,
    Event,
    Fenced,
    Policy,
    Released,
    Role,
    RoleChange,
    Roles,
    SessionLost,
    Started,
    Stopping,
    Suspended,
    describe,
)
from reporting.ha.session import POLL_S, STOP_DELIVERY_S, make_client, open_parents
from storage.reports import kind_of

log = logging.getLogger(__name__)


@dataclass
class _Queue:
    name: str
    roles: Roles
    delivery: Delivery
    # The session in which this instance created the queue's owner node; -1: it holds none.
    node_session: int = -1
    epoch_pending: bool = False
    # Fenced by the database: drop the owner node, then contend again.
    give_up: bool = False
    # Who holds the owner node, as last seen by the watch.
    owner: str | None = None


class GroupElection:
    """Decides which queues this instance owns; tells the server through `on_change(queue, change)`.

    `on_change` runs on the queue's own delivery thread, one change of that queue at a time; it
    may block (it stops and starts the queue's consumer and drainer).
    """

    def __init__(
        self,
        *,
        name: str,
        zookeeper: str,
        cluster: str,
        queues: Iterable[str],
        session_timeout_s: float,
        on_change: Callable[[str, RoleChange], None],
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.name = name
        self.cluster = cluster.rstrip("/")
        self.members_path = f"{self.cluster}/members"
        self._mutex = threading.Lock()
        self._queues = {
            queue: _Queue(
                queue,
                Roles(f"{name}[{queue}]", policy=Policy.SHARED),
                Delivery(f"{name}-{kind_of(queue)}", functools.partial(on_change, queue)),
            )
            for queue in sorted(set(queues))
        }
        self.queues = tuple(self._queues)
        # The live members, as last seen by the watch.
        self.members: tuple[str, ...] = ()
        # Members whose queue list differs from ours: a configuration mistake the assignment
        # cannot mend (a queue assigned to a member that does not list it goes unconsumed).
        self.mismatched: tuple[str, ...] = ()
        self._compared: tuple[str, ...] = ()
        self._member_session = -1
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._watching = False
        self._open_parents = auth is not None
        self.client = make_client(zookeeper, session_timeout_s=session_timeout_s, auth=auth)
        self.client.add_listener(self._on_state)
        self._thread = threading.Thread(target=self._run, name=f"{name}-election", daemon=True)

    # -- readable from any thread -------------------------------------------------------------

    def role_of(self, queue: str) -> Role:
        return self._queues[queue].roles.role

    def epoch_of(self, queue: str) -> int:
        return self._queues[queue].roles.epoch

    def owner_of(self, queue: str) -> str | None:
        """Who owns `queue`: this instance while it is active for it, else the owner node's."""
        q = self._queues[queue]
        return self.name if q.roles.role is Role.ACTIVE else q.owner

    def owned(self) -> list[str]:
        return [q.name for q in self._queues.values() if q.roles.role is Role.ACTIVE]

    @property
    def role(self) -> Role:
        """ACTIVE while this instance owns at least one queue."""
        return Role.ACTIVE if self.owned() else Role.STANDBY

    @property
    def epoch(self) -> int:
        """The newest epoch among the owned queues (0 when none): each queue has its own."""
        return max((self.epoch_of(queue) for queue in self.owned()), default=0)

    @property
    def holder(self) -> str | None:
        return None  # no single holder: see owner_of

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for q in self._queues.values():
            q.delivery.start()
        self._broadcast(Started(f"member of group {self.cluster}"))
        self.client.start_async()
        self._thread.start()

    def stop(self) -> None:
        """Stand by for every queue, let the server act on it, then close the session (which
        deletes the owner nodes and the member node at once: that is the hand-over)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread.ident is None:
            self.client.close()
            return
        self._wake.set()
        self._broadcast(Stopping())
        for q in self._queues.values():
            q.delivery.wait_delivered(STOP_DELIVERY_S)
        self.client.stop()
        self.client.close()
        self._thread.join(POLL_S * 4)
        for q in self._queues.values():
            q.delivery.stop(POLL_S * 4)

    def stood_down(self) -> None:
        """Only the segregated backup drains before standing down."""

    def lost_fence(self, queue: str, epoch: int | None = None) -> None:
        """The database rejected a write of `queue` at `epoch`: stand by for it, then contend
        again. A rejection of an older epoch than the queue's current one changes nothing."""
        q = self._queues[queue]
        with self._mutex:
            if epoch is not None and epoch < q.roles.epoch:
                return
            self._transition(q, Fenced())
            q.give_up = True
        self._wake.set()

    # -- events -------------------------------------------------------------------------------

    def _transition(self, q: _Queue, event: Event) -> RoleChange | None:
        # Called with the mutex held, so that delivery follows the order of the transitions.
        change = q.roles.apply(event)
        if change is not None:
            log.info("%s", describe(f"{self.name} [{q.name}]", change))
            q.delivery.put(change)
        return change

    def _apply(self, q: _Queue, event: Event) -> RoleChange | None:
        with self._mutex:
            return self._transition(q, event)

    def _broadcast(self, event: Event) -> bool:
        """Apply a connection event to every queue; True if any role changed."""
        with self._mutex:
            changes = [self._transition(q, event) for q in self._queues.values()]
        return any(change is not None for change in changes)

    def _session(self) -> int:
        # Every queue's roles see the same SessionLost events, so any one of them counts.
        with self._mutex:
            return next(iter(self._queues.values())).roles.session

    def _on_state(self, state: KazooState) -> None:
        # kazoo's connection thread: record and wake, never block.
        if state == KazooState.SUSPENDED:
            changed = self._broadcast(Suspended())
        elif state == KazooState.LOST:
            changed = self._broadcast(SessionLost())
        else:
            changed = self._broadcast(Connected())
        if not changed and not self._stopping.is_set():
            log.info("%s: zookeeper %s", self.name, str(state).lower())
        self._wake.set()

    def _on_members(self, children: list[str]) -> bool:
        self.members = tuple(sorted(children))
        self._wake.set()
        return not self._stopping.is_set()

    def _on_owner(self, q: _Queue, data: bytes | None, _stat: object) -> bool:
        q.owner = data.decode() if data else None
        self._wake.set()
        return not self._stopping.is_set()

    # -- the contest thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before looking, so a wake-up during the round is not lost
            try:
                self._round()
            except KazooException as exc:
                log.debug("%s: group round interrupted: %r", self.name, exc)
            except Exception:  # the contest must go on whatever one round ran into
                log.exception("%s: group round failed", self.name)
            self._wake.wait(POLL_S)

    def _round(self) -> None:
        if not self.client.connected:
            return
        session = self._session()
        if self._open_parents:
            open_parents(self.client, self.cluster)
            self._open_parents = False
        self._watch()
        if not self._register(session):
            return
        owners = {q.name: q.owner for q in self._queues.values()}
        self._compare_queues()
        mine = set(assign(self.queues, self.members, owners).get(self.name, ()))
        for q in self._queues.values():
            if self._stopping.is_set():
                return
            if q.node_session != session:
                q.node_session = -1  # an owner node dies with its session
            if q.node_session == session:
                if q.name not in mine:
                    self._give_up(q, "the queue is assigned to another member")
                elif q.give_up:
                    self._give_up(q, "fenced; contending again")
                else:
                    self._keep(q, session)
            else:
                q.give_up = False
                if q.name in mine:
                    self._take(q, session)

    def _watch(self) -> None:
        if self._watching:
            return
        self.client.ensure_path(self.members_path)
        for q in self._queues.values():
            self.client.ensure_path(queue_key(self.cluster, q.name))
        # kazoo keeps these watches across reconnects and calls back on its own thread.
        ChildrenWatch(self.client, self.members_path, self._on_members)
        for q in self._queues.values():
            DataWatch(
                self.client,
                f"{queue_key(self.cluster, q.name)}/owner",
                functools.partial(self._on_owner, q),
            )
        self._watching = True

    def _session_id(self) -> int | None:
        client_id = self.client.client_id
        return client_id[0] if client_id else None

    def _ours(self, path: str) -> bool:
        """True if the ephemeral node at `path` belongs to the current session."""
        try:
            _, stat = self.client.get(path)
        except NoNodeError:
            return False
        return stat.ephemeralOwner == self._session_id()

    def _register(self, session: int) -> bool:
        """The member node of this session exists; False while another instance has our name."""
        if self._member_session == session:
            return True
        path = f"{self.members_path}/{self.name}"
        try:
            self.client.create(path, ",".join(self.queues).encode(), ephemeral=True)
        except NodeExistsError:
            if not self._ours(path):
                log.error(
                    "%s: another live instance is a member under this name; names must differ",
                    self.name,
                )
                return False
        self._member_session = session
        return True

    def _compare_queues(self) -> None:
        """Each member node holds its instance's queue list: all of a group must list the same."""
        members = self.members
        if members == self._compared:
            return
        ours = ",".join(self.queues)
        mismatched = []
        for member in members:
            try:
                data, _ = self.client.get(f"{self.members_path}/{member}")
            except NoNodeError:
                continue
            if data.decode() != ours:
                mismatched.append(member)
                if member not in self.mismatched:
                    log.error(
                        "%s: member %s lists other queues than this instance (%s); every "
                        "instance of a group must list the same [broker] queues",
                        self.name,
                        member,
                        data.decode() or "none",
                    )
        self.mismatched = tuple(mismatched)
        self._compared = members

    def _take(self, q: _Queue, session: int) -> None:
        path = f"{queue_key(self.cluster, q.name)}/owner"
        try:
            self.client.create(path, self.name.encode(), ephemeral=True)
        except NodeExistsError:
            # Owned by someone else, or ours from a create whose reply was lost.
            if not self._ours(path):
                return
        q.node_session = session
        q.epoch_pending = True
        self._take_epoch(q, session)

    def _take_epoch(self, q: _Queue, session: int) -> None:
        if self._session() != session:
            return
        epoch = bump_epoch(self.client, f"{queue_key(self.cluster, q.name)}/epoch")
        q.epoch_pending = False
        self._apply(q, Acquired(epoch, "took the queue's owner node", session))

    def _keep(self, q: _Queue, session: int) -> None:
        if q.epoch_pending:
            self._take_epoch(q, session)
            return
        with self._mutex:
            unconfirmed = q.roles.held and q.roles.role is Role.STANDBY
        if not unconfirmed:
            return
        # Back from a suspension within the session: the node should still be ours; look
        # before consuming again.
        if self._ours(f"{queue_key(self.cluster, q.name)}/owner"):
            self._apply(q, Confirmed(session))
        else:
            self._apply(q, Released("the owner node is no longer ours"))
            q.node_session = -1

    def _give_up(self, q: _Queue, reason: str) -> None:
        self._apply(q, Released(reason))
        # The server stops the queue's consumer and drainer before the next owner may start.
        q.delivery.wait_delivered(STOP_DELIVERY_S)
        path = f"{queue_key(self.cluster, q.name)}/owner"
        try:
            _, stat = self.client.get(path)
            if stat.ephemeralOwner == self._session_id():
                self.client.delete(path, version=stat.version)
        except NoNodeError:
            pass
        q.node_session = -1
        q.give_up = False
