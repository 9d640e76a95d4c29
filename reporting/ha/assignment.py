"""Which member of a group owns which queue: a pure function of the queues, the members and who
owns what now.

Every instance computes it from what it sees in ZooKeeper, so no leader has to write it down; once
their views agree, their answers agree. The answer is balanced (each member owns
`len(queues) // len(members)` queues or one more) and sticky: a queue stays with its owner unless
the owner is gone or holds more than its share, so an instance joining or leaving moves only as
many queues as balance needs, each costing one hand-over. The per-queue owner node, not this
answer, guarantees that a queue never has two owners while it moves.
"""

from collections.abc import Iterable, Mapping


def assign(
    queues: Iterable[str],
    members: Iterable[str],
    owners: Mapping[str, str | None] | None = None,
) -> dict[str, tuple[str, ...]]:
    """member -> the queues it should own (every member is a key); `owners` is queue -> owner."""
    ordered = sorted(set(members))
    queue_list = sorted(set(queues))
    owners = owners or {}
    owned: dict[str, list[str]] = {member: [] for member in ordered}
    if not ordered:
        return {}
    # Who owns how many now; the members owning most get the larger shares, so fewer queues move.
    now = {member: 0 for member in ordered}
    for queue in queue_list:
        owner = owners.get(queue)
        if owner in now:
            now[owner] += 1
    base, extra = divmod(len(queue_list), len(ordered))
    by_load = sorted(ordered, key=lambda member: (-now[member], member))
    share = {member: base + (1 if i < extra else 0) for i, member in enumerate(by_load)}
    free = []
    for queue in queue_list:
        owner = owners.get(queue)
        if owner in owned and len(owned[owner]) < share[owner]:
            owned[owner].append(queue)
        else:
            free.append(queue)
    for queue in free:
        member = next(m for m in ordered if len(owned[m]) < share[m])
        owned[member].append(queue)
    return {member: tuple(sorted(qs)) for member, qs in owned.items()}
