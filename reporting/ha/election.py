"""The election API the server codes against, and `make_election` to pick a mode's election."""

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from reporting.errors import ZooKeeperRefused
from reporting.ha.roles import Role, RoleChange, describe
from reporting.ha.segregated import BackupElection, PrimaryElection
from reporting.ha.shared import SharedElection

log = logging.getLogger(__name__)

MODES = ("standalone", "shared", "segregated")  # group mode: ha.group.GroupElection
SEGREGATED_ROLES = ("primary", "backup")


class Election(Protocol):
    """Decides this instance's role and tells the server through `on_change`.

    `on_change` runs on one thread of the election's own, one change at a time, in order; it may
    block. `role`, `epoch` and `holder` may be read from any thread at any time.
    """

    @property
    def role(self) -> Role: ...

    @property
    def epoch(self) -> int: ...

    @property
    def holder(self) -> str | None: ...

    @property
    def error(self) -> str | None:
        """Why this instance cannot take part in its election (for good), else None."""

    @property
    def joined(self) -> bool:
        """The instance has taken its place in the election (its first round has run)."""

    def watch_refusals(self, callback: Callable[[ZooKeeperRefused], None]) -> None:
        """`callback` runs once if the election refuses to go on: its ZooKeeper credentials are
        wrong or missing, or a node it relies on is not the pair's own (a configuration to fix).
        Every role has stood by by then."""

    def start(self) -> None: ...

    def stop(self) -> None:
        """Stand by (the callback has returned when this does) and hand the role over."""

    def stood_down(self) -> None:
        """Segregated backup: the own broker is drained after a `drain_first` change."""

    def lost_fence(self, epoch: int | None = None, fence: int | None = None) -> None:
        """The database rejected `epoch` (None: the current one), its fence at `fence`: stand
        by, then contend again for an epoch above the fence."""


class StandaloneElection:
    """One instance, no ZooKeeper: always active, epoch 0."""

    def __init__(self, *, name: str, on_change: Callable[[RoleChange], None]) -> None:
        self.name = name
        self.role = Role.STANDBY
        self.epoch = 0
        self.holder: str | None = None
        self.error: str | None = None
        self.joined = False
        self._on_change = on_change
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.role = Role.ACTIVE
        self.holder = self.name
        self.joined = True
        change = RoleChange(Role.ACTIVE, 0, self.name, "standalone")
        log.info("%s", describe(self.name, change), extra={"epoch": change.epoch})
        # Same promise as the other elections: the callback never runs on the caller's thread.
        self._thread = threading.Thread(
            target=self._on_change, args=(change,), name=f"{self.name}-role-changes", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def stood_down(self) -> None:
        pass

    def watch_refusals(self, callback: Callable[[ZooKeeperRefused], None]) -> None:
        pass  # nothing to refuse it

    def lost_fence(self, epoch: int | None = None, fence: int | None = None) -> None:
        # Nobody else can hold epoch 0's role; a fence here is a bug elsewhere, not a handover.
        log.error(
            "%s: fenced in standalone mode (epoch %s); keeping the role",
            self.name,
            epoch,
            extra={"epoch": epoch},
        )


def make_election(
    *,
    mode: str,
    name: str,
    role: str,
    zookeeper: str,
    cluster: str,
    session_timeout_s: float,
    grace_s: float,
    healthy: Callable[[], bool],
    on_change: Callable[[RoleChange], None],
    auth: tuple[str, str] | None = None,
) -> Election:
    """The election of `mode`; `role` and `healthy` matter to segregated mode only, `grace_s` to
    the segregated backup only; `auth` (user, password) makes ZooKeeper's nodes the pair's own."""
    if mode == "standalone":
        return StandaloneElection(name=name, on_change=on_change)
    common = dict(
        name=name,
        zookeeper=zookeeper,
        cluster=cluster,
        session_timeout_s=session_timeout_s,
        on_change=on_change,
        auth=auth,
    )
    if mode == "shared":
        return SharedElection(**common)
    if mode == "segregated":
        if role == "primary":
            return PrimaryElection(healthy=healthy, **common)
        if role == "backup":
            return BackupElection(grace_s=grace_s, **common)
        raise ValueError(f"ha.role: expected one of {SEGREGATED_ROLES}, got {role!r}")
    raise ValueError(f"ha.mode: expected one of {MODES}, got {mode!r}")
