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

Every queue is a slot of the group's contest (`contest.Slot`): a role state machine of its own,
with the shared policy (the connection suspended means standing by at once), and a delivery
thread of its own, so that queues are handed over side by side.
"""

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from reporting.ha.assignment import assign
from reporting.ha.contest import STOP_DELIVERY_S, Participant, Slot
from reporting.ha.epoch import bump_epoch
from reporting.ha.roles import Acquired, Confirmed, Policy, Released, Role, RoleChange
from storage.reports import kind_of

log = logging.getLogger(__name__)


def queue_key(cluster: str, queue: str) -> str:
    """A queue's ZooKeeper folder, also its fencing domain and journal positions key."""
    return f"{cluster.rstrip('/')}/queues/{queue}"


@dataclass
class _Queue:
    name: str
    slot: Slot
    # The session in which this instance created the queue's owner node; -1: it holds none.
    node_session: int = -1
    epoch_pending: bool = False
    # Fenced by the database: drop the owner node, then contend again.
    give_up: bool = False
    # Who holds the owner node, as last seen by the watch.
    owner: str | None = None
    # The highest fence that refused this instance for the queue: the next epoch is above it.
    fence_seen: int = 0


class GroupElection(Participant):
    """Decides which queues this instance owns; tells the server through `on_change(queue, change)`.

    A contest with a slot per queue. `on_change` runs on the queue's own delivery thread, one
    change of that queue at a time; it may block (it stops and starts the queue's consumer and
    drainer).
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
        super().__init__(
            name=name,
            zookeeper=zookeeper,
            cluster=cluster,
            session_timeout_s=session_timeout_s,
            auth=auth,
        )
        self.members_path = f"{self.cluster}/members"
        self._queues = {
            queue: _Queue(
                queue,
                self.contest.add_slot(
                    f"{name} [{queue}]",
                    policy=Policy.SHARED,
                    on_change=functools.partial(on_change, queue),
                    thread=f"{name}-{kind_of(queue)}",
                    queue=queue,
                ),
            )
            for queue in sorted(set(queues))
        }
        self.queues = tuple(self._queues)
        self.contest.relies_on(self.members_path, f"{self.cluster}/queues")
        for queue in self.queues:
            self.contest.relies_on(self._key(queue), f"{self._key(queue)}/epoch")
        self.contest.relies_on(
            f"{self.members_path}/{name}",
            *(f"{self._key(queue)}/owner" for queue in self.queues),
            ephemeral=True,
        )
        # The live members, as last seen by the watch.
        self.members: tuple[str, ...] = ()
        # Members whose queue list differs from ours: a configuration mistake the assignment
        # cannot mend (a queue assigned to a member that does not list it goes unconsumed).
        self.mismatched: tuple[str, ...] = ()
        self._compared: tuple[str, ...] = ()
        self._member_session = -1
        self._watching = False
        self._watching_members = False
        # Set by the watch on the members folder when it is deleted: the round treats it as a
        # node of the election gone (rounds of a settled group touch no node that would say so).
        self._folder_gone = threading.Event()

    # -- readable from any thread -------------------------------------------------------------

    def role_of(self, queue: str) -> Role:
        return self._queues[queue].slot.roles.role

    def epoch_of(self, queue: str) -> int:
        return self._queues[queue].slot.roles.epoch

    def owner_of(self, queue: str) -> str | None:
        """Who owns `queue`: this instance while it is active for it, else the owner node's."""
        q = self._queues[queue]
        return self.name if q.slot.roles.role is Role.ACTIVE else q.owner

    def owned(self) -> list[str]:
        return [q.name for q in self._queues.values() if q.slot.roles.role is Role.ACTIVE]

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
        self.contest.start(f"member of group {self.cluster}")

    def lost_fence(self, queue: str, epoch: int | None = None, fence: int | None = None) -> None:
        """The database rejected a write of `queue` at `epoch`, its fence at `fence` where the
        database said: stand by for it, then contend again, for an epoch above the fence. A
        rejection of an older epoch than the queue's current one changes nothing."""
        q = self._queues[queue]
        q.fence_seen = max(q.fence_seen, fence or 0)
        if self.contest.fence(q.slot, epoch):
            q.give_up = True
            self.contest.wake()

    # -- watches (kazoo's threads) ------------------------------------------------------------

    def _on_members(self, children: list[str]) -> bool:
        self.members = tuple(sorted(children))
        self.contest.wake()
        return not self.contest.stopping

    def _on_members_folder(self, _data: bytes | None, stat: object) -> bool:
        if stat is None and self._watching_members:
            self._folder_gone.set()
            self.contest.wake()
        return not self.contest.stopping

    def _on_owner(self, q: _Queue, data: bytes | None, _stat: object) -> bool:
        q.owner = data.decode() if data else None
        self.contest.wake()
        return not self.contest.stopping

    # -- the round thread ---------------------------------------------------------------------

    def _round(self) -> None:
        self._look()
        self.contest.wait()

    def _look(self) -> None:
        if not self.client.connected:
            return
        if self._folder_gone.is_set():
            self._folder_gone.clear()
            raise NoNodeError(self.members_path)
        session = self.contest.session()
        self._watch()
        if not self._register(session):
            return
        owners = {q.name: q.owner for q in self._queues.values()}
        self._compare_queues()
        mine = set(assign(self.queues, self.members, owners).get(self.name, ()))
        for q in self._queues.values():
            if self.contest.stopping:
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
        if not self._watching_members:
            # Ends with its folder (kazoo's ChildrenWatch stops on a deleted node): made again
            # by _nodes_gone.
            ChildrenWatch(self.client, self.members_path, self._on_members)
            self._watching_members = True
        if self._watching:
            return
        # kazoo keeps these watches across reconnects and calls back on its own thread; a
        # DataWatch outlives its node's deletion.
        DataWatch(self.client, self.members_path, self._on_members_folder)
        for q in self._queues.values():
            DataWatch(
                self.client,
                f"{self._key(q.name)}/owner",
                functools.partial(self._on_owner, q),
            )
        self._watching = True

    def _nodes_gone(self) -> None:
        # The member node and the owner nodes went with the deleted folders: register again,
        # give up the queues held (their owner nodes are no proof of ownership any more; the
        # next owner's epoch is above the fence), and watch the members folder once made again.
        for q in self._queues.values():
            if q.node_session != -1:
                self._give_up(q, "a node of the group is gone")
        self._member_session = -1
        self._watching_members = False

    def _key(self, queue: str) -> str:
        return queue_key(self.cluster, queue)

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
        path = f"{self._key(q.name)}/owner"
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
        if self.contest.session() != session:
            return
        epoch = bump_epoch(self.client, f"{self._key(q.name)}/epoch", q.fence_seen)
        q.epoch_pending = False
        self.contest.apply(q.slot, Acquired(epoch, "took the queue's owner node", session))

    def _keep(self, q: _Queue, session: int) -> None:
        if q.epoch_pending:
            self._take_epoch(q, session)
            return
        if not self.contest.unconfirmed(q.slot):
            return
        # Back from a suspension within the session: the node should still be ours; look
        # before consuming again.
        if self._ours(f"{self._key(q.name)}/owner"):
            self.contest.apply(q.slot, Confirmed(session))
        else:
            self.contest.apply(q.slot, Released("the owner node is no longer ours"))
            q.node_session = -1

    def _give_up(self, q: _Queue, reason: str) -> None:
        self.contest.apply(q.slot, Released(reason))
        # The server stops the queue's consumer and drainer before the next owner may start.
        q.slot.delivery.wait_delivered(STOP_DELIVERY_S)
        path = f"{self._key(q.name)}/owner"
        try:
            _, stat = self.client.get(path)
            if stat.ephemeralOwner == self._session_id():
                self.client.delete(path, version=stat.version)
        except NoNodeError:
            pass
        q.node_session = -1
        q.give_up = False
