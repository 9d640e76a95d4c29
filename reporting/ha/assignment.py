"""Which member of a group owns which queue: a pure function of the queues and the members.

Every instance computes the same answer from the same member list, so no leader has to write it
down. Queues and members are taken in sorted order and dealt round robin: each member owns
`len(queues) // len(members)` queues or one more. A member joining or leaving may move queues
that neither it nor its neighbours held; each move costs one hand-over, and the per-queue lock
makes sure that a queue never has two owners while it moves.
"""

from collections.abc import Iterable


def assign(queues: Iterable[str], members: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """member -> the queues it should own; every member is a key, even one with no queue."""
    ordered = sorted(set(members))
    owned: dict[str, list[str]] = {member: [] for member in ordered}
    if ordered:
        for i, queue in enumerate(sorted(set(queues))):
            owned[ordered[i % len(ordered)]].append(queue)
    return {member: tuple(qs) for member, qs in owned.items()}
