"""What the pair elections (shared, segregated primary, segregated backup) share: a contest with
one slot, the instance's role. Each subclass is the recipe: its `_round` is one round."""

from collections.abc import Callable
from typing import Any

from reporting.ha.contest import POLL_S, Participant
from reporting.ha.roles import Event, Policy, Role, RoleChange


class PairElection(Participant):
    def __init__(
        self, *, on_change: Callable[[RoleChange], None], policy: Policy, **session: Any
    ) -> None:
        super().__init__(**session)
        self.slot = self.contest.add_slot(
            self.name, policy=policy, on_change=on_change, thread=self.name
        )
        # The highest fence that refused this instance: its next epoch is taken above it.
        self.fence_seen = 0

    # Readable from any thread: each is one attribute read of the roles.

    @property
    def role(self) -> Role:
        return self.slot.roles.role

    @property
    def epoch(self) -> int:
        return self.slot.roles.epoch

    @property
    def holder(self) -> str | None:
        return self.slot.roles.holder

    def start(self) -> None:
        self.contest.start(self._waiting_for())

    def lost_fence(self, epoch: int | None = None, fence: int | None = None) -> None:
        """The database rejected a write of `epoch` (None: the current one), its fence at
        `fence` where the database said: stand by now, and take the next epoch above the fence.

        A rejection of an older epoch than the current one is about a role given up since, and
        changes nothing.
        """
        self.fence_seen = max(self.fence_seen, fence or 0)
        if self.contest.fence(self.slot, epoch):
            self._fenced()
            self.contest.wake()

    # For the subclasses.

    def _waiting_for(self) -> str:
        """What a standby instance of this kind waits for, for the first log line."""
        raise NotImplementedError

    def _fenced(self) -> None:
        """Note for the contest thread that the role was lost to the fence."""

    def _apply(self, event: Event) -> RoleChange | None:
        return self.contest.apply(self.slot, event)

    def _session(self) -> int:
        return self.contest.session()

    def _wait(self, timeout_s: float = POLL_S) -> None:
        self.contest.wait(timeout_s)
