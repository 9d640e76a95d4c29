"""The role state machine of one instance: events in, role changes out.

Pure: no ZooKeeper, no threads, no clock. The elections feed it what they observe (the lock was
acquired, the connection is suspended, the primary node is back) and deliver what it returns.
One machine serves all modes; `Policy` says how a mode treats the connection to ZooKeeper.
"""

from dataclasses import dataclass
from enum import Enum, StrEnum


class Role(StrEnum):
    ACTIVE = "active"
    STANDBY = "standby"


@dataclass(frozen=True)
class RoleChange:
    """What the server must do now.

    ACTIVE: consume and drain, writing with `epoch`. STANDBY: stop consuming at once. STANDBY
    with `drain_first` (segregated backup only): the primary is back; keep consuming the own broker
    until it is empty, then call `Election.stood_down()`; until then the role stays ACTIVE.
    """

    role: Role
    epoch: int
    holder: str | None
    reason: str
    drain_first: bool = False


class Policy(Enum):
    # The lock holder may assume nothing while the connection is suspended: a session it cannot
    # see may already have expired and the lock passed on, so it stands by at once.
    SHARED = "shared"
    # Each instance consumes only its own broker into its own journal: losing sight of ZooKeeper
    # changes nothing the instance could act on, so it keeps its role.
    SEGREGATED = "segregated"


# Events. `session` counts ZooKeeper sessions: an observation made in an older session than the
# machine's is stale (a lock node dies with its session) and is ignored.


@dataclass(frozen=True)
class Started:
    """The election has started: the server hears its first role, standby."""

    reason: str


@dataclass(frozen=True)
class Connected:
    """The client is connected; a held lock still needs `Confirmed` before going active."""


@dataclass(frozen=True)
class Suspended:
    """The connection to ZooKeeper dropped; the session may or may not survive."""


@dataclass(frozen=True)
class SessionLost:
    """The session expired: every ephemeral node of ours, the lock node too, is gone."""


@dataclass(frozen=True)
class Acquired:
    """The role may be taken: the lock is ours, the primary node is ours, or the primary is gone.

    `epoch` None means no new epoch was taken (the caller saw the role already active); if the
    role is standby by the time the event is applied, it is ignored and the caller tries again.
    `session` None: not tied to a session (the segregated backup).
    """

    epoch: int | None
    reason: str
    session: int | None = None


@dataclass(frozen=True)
class Confirmed:
    """After a reconnect, the lock node of `session` is still there and still first."""

    session: int


@dataclass(frozen=True)
class Released:
    """The lock or the primary node was given up (unhealthy, no longer first contender)."""

    reason: str


@dataclass(frozen=True)
class Fenced:
    """The database rejected our epoch: a newer holder exists."""


@dataclass(frozen=True)
class PrimaryBack:
    """The segregated backup sees the primary node again."""

    holder: str | None


@dataclass(frozen=True)
class StoodDown:
    """The segregated backup has drained its own broker after `PrimaryBack`."""


@dataclass(frozen=True)
class HolderSeen:
    """Who holds the role elsewhere, for /status; never a role change by itself."""

    holder: str | None


@dataclass(frozen=True)
class EpochTaken:
    """Segregated: `epoch` is the instance's own for its own journal, which it drains whatever
    its role; taken at its first connection and again after the fence refused the last one."""

    epoch: int


@dataclass(frozen=True)
class Stopping:
    """The instance is shutting down and hands the role over."""


Event = (
    Started
    | Connected
    | Suspended
    | SessionLost
    | Acquired
    | Confirmed
    | Released
    | Fenced
    | PrimaryBack
    | StoodDown
    | HolderSeen
    | EpochTaken
    | Stopping
)


class Roles:
    """The role of instance `name`; `apply` returns the change to deliver, if any.

    `held` is what the machine knows about the lock (shared) or the primary node (segregated
    primary); `draining` is the segregated backup between `PrimaryBack` and `StoodDown`, during
    which `role` stays ACTIVE because the server is still consuming.
    """

    def __init__(self, name: str, *, policy: Policy) -> None:
        self.name = name
        self.policy = policy
        self.role = Role.STANDBY
        self.epoch = 0
        self.holder: str | None = None
        self.session = 0
        self.connected = False
        self.held = False
        self.draining = False
        self.stopped = False

    def apply(self, event: Event) -> RoleChange | None:
        if self.stopped:
            return None
        match event:
            case Started(reason=reason):
                return RoleChange(Role.STANDBY, self.epoch, None, reason)
            case Connected():
                self.connected = True
                return None
            case Suspended():
                self.connected = False
                if self.policy is Policy.SHARED:
                    return self._stand_by("zookeeper connection suspended")
                return None
            case SessionLost():
                self.connected = False
                self.session += 1
                self.held = False
                if self.policy is Policy.SHARED:
                    return self._stand_by("zookeeper session lost")
                return None
            case Acquired(epoch=epoch, reason=reason, session=session):
                return self._acquired(epoch, reason, session)
            case Confirmed(session=session):
                if session != self.session or not self.held or not self.connected:
                    return None
                if self.role is Role.ACTIVE:
                    return None
                return self._activate("zookeeper connection restored, still holding the lock")
            case Released(reason=reason):
                self.held = False
                return self._stand_by(reason)
            case Fenced():
                self.held = False
                return self._stand_by("fenced")
            case PrimaryBack(holder=holder):
                self.holder = holder
                if self.role is not Role.ACTIVE or self.draining:
                    return None
                self.draining = True
                return RoleChange(Role.STANDBY, self.epoch, holder, "primary is back", True)
            case StoodDown():
                if not self.draining:
                    return None
                return self._stand_by("own broker drained after the primary came back")
            case HolderSeen(holder=holder):
                if self.role is Role.STANDBY:
                    self.holder = holder
                return None
            case EpochTaken(epoch=epoch):
                if self.role is Role.ACTIVE or epoch <= self.epoch:
                    return None  # an activation took a newer one meanwhile
                self.epoch = epoch
                return RoleChange(Role.STANDBY, epoch, self.holder, "own journal's epoch taken")
            case Stopping():
                change = self._stand_by("stopping")
                self.held = False
                self.stopped = True
                return change

    def _acquired(self, epoch: int | None, reason: str, session: int | None) -> RoleChange | None:
        if session is not None and session != self.session:
            return None
        if self.role is Role.ACTIVE:
            if not self.draining:
                return None
            # The primary went away again while we were draining: carry on as before.
            self.draining = False
            return self._activate(reason)
        if epoch is None:
            return None
        self.held = True
        self.epoch = epoch
        if self.policy is Policy.SHARED and not self.connected:
            # Suspended between taking the lock and reporting it: wait for Confirmed.
            return None
        return self._activate(reason)

    def _activate(self, reason: str) -> RoleChange:
        self.role = Role.ACTIVE
        self.draining = False
        self.holder = self.name
        return RoleChange(Role.ACTIVE, self.epoch, self.name, reason)

    def _stand_by(self, reason: str) -> RoleChange | None:
        self.draining = False
        if self.role is Role.STANDBY:
            return None
        self.role = Role.STANDBY
        # Who holds the role now is unknown until the election looks again.
        self.holder = None
        return RoleChange(Role.STANDBY, self.epoch, None, reason)


def describe(name: str, change: RoleChange) -> str:
    """The one log line of a role change."""
    if change.drain_first:
        return f"{name}: role standby once the own broker is drained (epoch {change.epoch}): " + (
            change.reason
        )
    if change.role is Role.ACTIVE:
        return f"{name}: role active (epoch {change.epoch}): {change.reason}"
    return f"{name}: role standby: {change.reason}"
