"""The contest: one ZooKeeper session and the thread that runs an election's rounds on it.

An election is a recipe over a contest, as kazoo's recipes are over a client. The contest decides
roles in slots: the pair elections have one slot, the group election one per queue. It owns what
every election shares: the kazoo client, the state listener (so "stand by when suspended" is
decided here, by each slot's policy), the round thread and its wake event, the order in which
role changes are delivered, start and stop, and whether this instance may take part at all.

Three kinds of thread touch a contest: kazoo's connection thread (the state listener), the round
thread (the only one that talks to ZooKeeper for the election) and the server's threads (`fence`,
the role properties). All of them change roles only through `apply`, which holds a mutex for the
in-memory step alone: never across a ZooKeeper call, or the listener would stall the connection
thread that call waits on.
"""

import logging
import threading
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoAuthError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KeeperState
from kazoo.retry import KazooRetry
from kazoo.security import make_digest_acl

from reporting.errors import ZooKeeperRefused, ZooKeeperUnreachable
from reporting.ha import roles
from reporting.ha.acl import check_nodes, no_access, open_parents
from reporting.ha.delivery import Delivery
from reporting.ha.roles import Event, Policy, Role, RoleChange, Roles, describe
from reporting.logs import About

log = logging.getLogger(__name__)

# How often the round thread looks again when nothing woke it.
POLL_S = 0.5
# How long stop() waits for the server's callback of the last STANDBY before closing the session.
STOP_DELIVERY_S = 10.0
# How long stop() waits, cut off from ZooKeeper, for the session's close and the round thread.
CUT_OFF_STOP_S = 0.2

_STATES = {
    KazooState.SUSPENDED: "connection suspended",
    KazooState.LOST: "session lost",
    KazooState.CONNECTED: "connected",
}


def make_client(
    zookeeper: str,
    *,
    session_timeout_s: float,
    auth: tuple[str, str] | None = None,
    logger: Any = None,
) -> KazooClient:
    """A kazoo client that reconnects forever; with `auth`, every node it creates is that digest
    user's alone (all instances of a pair or group use the same user). `logger`: kazoo's own
    (kazoo.client) when None."""
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
        logger=logger,
        **access,
    )


def close_client(client: KazooClient, *, wait_s: float | None, name: str) -> None:
    """Stops and closes `client` on a thread of its own, waiting for it `wait_s` (None: until
    done): cut off, kazoo's stop waits on a connection attempt to the dark path."""

    def close() -> None:
        try:
            client.stop()
            client.close()
        except Exception as exc:  # kazoo gives up on a connection thread that will not stop
            log.warning("%s: zookeeper client not closed: %r", name, exc)

    closer = threading.Thread(target=close, name=f"{name}-close", daemon=True)
    closer.start()
    closer.join(wait_s)


class Slot:
    """One role the contest decides: the pair's, or one queue's of a group.

    `roles.role`, `.epoch` and `.holder` may be read from any thread; `on_change` runs on the
    slot's own delivery thread, one change at a time, in the order of the transitions.
    """

    def __init__(
        self,
        label: str,
        *,
        policy: Policy,
        on_change: Callable[[RoleChange], None],
        thread: str,
        queue: str | None = None,
    ) -> None:
        self.label = label
        self.log = About(log, queue=queue)
        self.roles = Roles(label, policy=policy)
        self.delivery = Delivery(thread, on_change)


class Contest:
    """Runs `round` on a thread of its own, again and again, once connected and once the nodes
    the election relies on (`relies_on`) are found to be the pair's own.

    `round` talks to ZooKeeper and applies what it finds to the slots; it returns soon, waiting
    with `wait` when it has nothing to do. `interrupt` makes a blocking step of it return (stop()
    was called). A node this instance has no access to, in a round or at the check, ends the
    contest: every slot stands by, `refusal` says why, and the `watch_refusals` callback runs.
    """

    def __init__(
        self,
        *,
        name: str,
        zookeeper: str,
        cluster: str,
        session_timeout_s: float,
        round: Callable[[], None],
        interrupt: Callable[[], None] = lambda: None,
        nodes_gone: Callable[[], None] = lambda: None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.name = name
        self.hosts = zookeeper
        self.cluster = cluster.rstrip("/")
        self.auth = auth
        self.slots: list[Slot] = []
        # None while this instance can take part; else why not (it never changes back).
        self.refusal: ZooKeeperRefused | None = None
        self._round = round
        self._interrupt = interrupt
        self._nodes_gone = nodes_gone
        self._gone_said = False
        self._on_refused: Callable[[ZooKeeperRefused], None] | None = None
        # Persistent nodes, created where missing, and ephemeral ones, checked where present.
        self._nodes: list[str] = [self.cluster]
        self._ephemeral: list[str] = []
        self._checked = False
        self._session = 0
        self._mutex = threading.Lock()
        # Set whenever the round thread has something new to look at.
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # Set once a round has run to its end: this instance has taken its place in the election.
        self.joined = threading.Event()
        self.client = make_client(zookeeper, session_timeout_s=session_timeout_s, auth=auth)
        self.client.add_listener(self._on_state)
        self._thread = threading.Thread(target=self._run, name=f"{name}-election", daemon=True)

    def add_slot(self, label: str, **options: Any) -> Slot:
        """A role to decide, with the options `Slot` takes: the pair's, or a `queue`'s of a
        group (its lines carry the queue)."""
        slot = Slot(label, **options)
        self.slots.append(slot)
        return slot

    def relies_on(self, *paths: str, ephemeral: bool = False) -> None:
        """Nodes of the election (before start): each must be the pair's own where it exists."""
        (self._ephemeral if ephemeral else self._nodes).extend(paths)

    def watch_refusals(self, callback: Callable[[ZooKeeperRefused], None]) -> None:
        """`callback` runs once, if this instance cannot take part (on a kazoo or round thread)."""
        self._on_refused = callback
        if self.refusal is not None:
            callback(self.refusal)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, reason: str) -> None:
        """Every slot hears it is standby, with `reason`; then the session and rounds begin."""
        for slot in self.slots:
            slot.delivery.start()
        self.broadcast(roles.Started(reason))
        # Asynchronous: a ZooKeeper that is down at start is waited for, not an error.
        self.client.start_async()
        self._thread.start()

    def stop(self) -> None:
        """Stand by, let the server act on it, then close the session.

        Closing the session deletes its ephemeral nodes on the server at once (lock, primary,
        owner and member nodes alike): that is the hand-over. If ZooKeeper is unreachable they
        expire with the session instead.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread.ident is None:  # never started
            self.client.close()
            return
        self._interrupt()
        self._wake.set()
        self.broadcast(roles.Stopping())
        for slot in self.slots:
            slot.delivery.wait_delivered(STOP_DELIVERY_S)
        # The round thread may sit in a ZooKeeper call that waits for a reconnect; closing the
        # client fails that call, so join it only afterwards. Closing waits for kazoo's connection
        # thread, which, cut off, may sit in a connect attempt for up to a session timeout; then
        # there is nothing for the close to hand over (the session's nodes expire with it) and
        # the roles have stopped, so neither is waited for beyond a moment.
        wait_s = None if self.client.connected else CUT_OFF_STOP_S
        close_client(self.client, wait_s=wait_s, name=self.name)
        self._thread.join(POLL_S * 4 if wait_s is None else wait_s)
        for slot in self.slots:
            slot.delivery.stop(POLL_S * 4)

    # -- roles --------------------------------------------------------------------------------

    def apply(self, slot: Slot, event: Event) -> RoleChange | None:
        with self._mutex:
            return self._transition(slot, event)

    def broadcast(self, event: Event) -> bool:
        """Apply `event` to every slot; True if any role changed."""
        with self._mutex:
            changes = [self._transition(slot, event) for slot in self.slots]
        return any(change is not None for change in changes)

    def fence(self, slot: Slot, epoch: int | None) -> bool:
        """The database rejected a write of `epoch` (None: the current one): stand `slot` by,
        and True: the caller notes it for its rounds, then wakes the round thread.

        False, changing nothing, for an older epoch than the slot's: that rejection is about a
        role given up since.
        """
        with self._mutex:
            # Checked and applied under one hold: a newer activation cannot slip in between.
            if epoch is not None and epoch < slot.roles.epoch:
                return False
            self._transition(slot, roles.Fenced())
        return True

    def unconfirmed(self, slot: Slot) -> bool:
        """The slot holds its node but stood by on a suspension: look before going active."""
        with self._mutex:
            return slot.roles.held and slot.roles.role is Role.STANDBY

    def session(self) -> int:
        """Counts lost sessions: what a round saw in an older one is gone with it."""
        with self._mutex:
            return self._session

    def wait(self, timeout_s: float = POLL_S) -> None:
        self._wake.wait(timeout_s)

    def wake(self) -> None:
        self._wake.set()

    def _transition(self, slot: Slot, event: Event) -> RoleChange | None:
        # Called with the mutex held, so that the order of delivery is that of the transitions.
        change = slot.roles.apply(event)
        if change is not None:
            slot.log.info("%s", describe(slot.label, change), extra={"epoch": change.epoch})
            slot.delivery.put(change)
        return change

    # -- the connection and the rounds --------------------------------------------------------

    def _on_state(self, state: KazooState) -> None:
        # kazoo's connection thread: record and wake, never block.
        if state == KazooState.SUSPENDED:
            changed = self.broadcast(roles.Suspended())
        elif state == KazooState.LOST:
            with self._mutex:
                self._session += 1
                changes = [self._transition(slot, roles.SessionLost()) for slot in self.slots]
            changed = any(change is not None for change in changes)
            if self.client.client_state == KeeperState.AUTH_FAILED:
                self._refuse(ZooKeeperRefused(self.hosts, self.cluster, no_access(self.auth)))
        else:
            changed = self.broadcast(roles.Connected())
        if not changed and not self._stopping.is_set():
            level = logging.INFO if state == KazooState.CONNECTED else logging.WARNING
            log.log(level, "%s: zookeeper %s; roles kept", self.name, _STATES[state])
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set() and self.refusal is None:
            # Cleared before looking, so a wake-up during the round is not lost.
            self._wake.clear()
            try:
                if not self._checked:
                    self._check()
                    continue
                self._round()
                self.joined.set()
                self._gone_said = False
            except ZooKeeperRefused as refusal:
                self._refuse(refusal)
            except NoAuthError:
                self._refuse(self._diagnose())
            except NoNodeError:
                # A node the election relies on was deleted under it (its ZooKeeper lost its
                # data, or the cluster path was removed by hand): the next round creates them
                # again, and the recipe lets go of what it held or watched in the old ones.
                # Said once until a round runs to its end again.
                log.log(
                    logging.DEBUG if self._gone_said else logging.WARNING,
                    "%s: a node of the election under %s is gone; creating them again",
                    self.name,
                    self.cluster,
                )
                self._gone_said = True
                self._checked = False
                try:
                    self._nodes_gone()
                except KazooException as exc:  # the connection dropped: the next round tells
                    log.debug("%s: letting go of the old nodes interrupted: %r", self.name, exc)
                self.wait()
            except KazooException as exc:
                # Mostly the connection dropping mid-round; the listener has seen it too.
                log.debug("%s: election round interrupted: %r", self.name, exc)
                self.wait()
            except Exception:  # the contest must go on whatever one round ran into
                log.exception("%s: election round failed", self.name)
                self.wait()

    def check_access(self, timeout_s: float) -> None:
        """For `check-config`, instead of start(): connect, check every node the election relies
        on that exists, as the first round would, creating nothing; then close. Raises
        ZooKeeperRefused, or ZooKeeperUnreachable if no server answered within timeout_s."""
        try:
            self.client.start(timeout=timeout_s)
        except KazooTimeoutError:
            self.client.stop()
            self.client.close()
            raise ZooKeeperUnreachable(self.hosts, timeout_s) from None
        try:
            check_nodes(self.client, self.hosts, self._nodes + self._ephemeral, auth=self.auth)
        finally:
            self.client.stop()
            self.client.close()

    def _check(self) -> None:
        """Once connected: create the nodes the election relies on, then check every one."""
        if not self.client.connected:
            self.wait()
            return
        if self.auth is not None:
            try:
                open_parents(self.client, self.cluster)
            except NoAuthError:
                parent = self.cluster.rsplit("/", 1)[0]
                raise ZooKeeperRefused(self.hosts, parent, "cannot create it: no access") from None
        failed = None
        for path in self._nodes:
            try:
                self.client.ensure_path(path)
            except NoAuthError:
                failed = path
                break
        # Names the node that stood in the way of the create, if it can.
        check_nodes(self.client, self.hosts, self._nodes + self._ephemeral, auth=self.auth)
        if failed is not None:
            raise ZooKeeperRefused(self.hosts, failed, f"cannot create it: {no_access(self.auth)}")
        self._checked = True

    def _diagnose(self) -> ZooKeeperRefused:
        # A round was refused access though the check passed: name the node if it is one the
        # check knows (its ACL changed since), else the cluster the node is under.
        try:
            check_nodes(self.client, self.hosts, self._nodes + self._ephemeral, auth=self.auth)
        except ZooKeeperRefused as refusal:
            return refusal
        except KazooException:
            pass
        reason = f"a node below it: {no_access(self.auth)}"
        return ZooKeeperRefused(self.hosts, self.cluster, reason)

    def _refuse(self, refusal: ZooKeeperRefused) -> None:
        with self._mutex:
            if self.refusal is not None or self._stopping.is_set():
                return
            self.refusal = refusal
            for slot in self.slots:
                self._transition(slot, roles.Released(f"cannot take part: {refusal}"))
        log.error("%s: %s", self.name, refusal)
        self._wake.set()
        if self._on_refused is not None:
            self._on_refused(refusal)


class Participant:
    """An election over a contest of its own: `_round` is one round of its recipe, `_interrupt`
    makes a blocking step of it return. Offers the server what every election shares."""

    def __init__(self, **session: Any) -> None:
        """`session`: Contest's name, zookeeper, cluster, session_timeout_s and auth."""
        self.contest = Contest(
            round=self._round, interrupt=self._interrupt, nodes_gone=self._nodes_gone, **session
        )
        self.name = self.contest.name
        self.cluster = self.contest.cluster
        self.client = self.contest.client

    @property
    def joined(self) -> bool:
        """A round has run to its end: the instance has taken its place in the election."""
        return self.contest.joined.is_set()

    @property
    def error(self) -> str | None:
        """Why this instance cannot take part in its election (then for good), else None."""
        return None if self.contest.refusal is None else str(self.contest.refusal)

    def watch_refusals(self, callback: Callable[[ZooKeeperRefused], None]) -> None:
        """`callback` runs once, if this instance cannot take part: a configuration to fix."""
        self.contest.watch_refusals(callback)

    def check_access(self, timeout_s: float) -> None:
        """Instead of start(): may this instance take part? (see Contest.check_access)"""
        self.contest.check_access(timeout_s)

    def stop(self) -> None:
        """Stand by, let the server act on it, then close the session: the hand-over."""
        self.contest.stop()

    def stood_down(self) -> None:
        """Only the segregated backup drains before standing down; elsewhere nothing to do."""

    def _round(self) -> None:
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Nothing of the round blocks for long unless the recipe says so."""

    def _nodes_gone(self) -> None:
        """A round met a node of the election deleted: let go of what the old nodes held."""
