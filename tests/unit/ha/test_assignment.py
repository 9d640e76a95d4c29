"""The group's queue assignment: complete, balanced, the same from every view, and sticky."""

from hypothesis import given
from hypothesis import strategies as st

from reporting.ha.assignment import assign

names = st.text("abcdefgh", min_size=1, max_size=3)
queue_sets = st.sets(names.map(lambda n: f"gvp.reporting.{n}"), min_size=0, max_size=12)
member_sets = st.sets(names, min_size=1, max_size=6)


def owners_of(answer: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {queue: member for member, queues in answer.items() for queue in queues}


@given(queue_sets, member_sets, st.data())
def test_every_queue_once_and_balanced(queues, members, data) -> None:
    # Whatever the current owners (members, strangers or nobody), the answer is complete.
    owners = {q: data.draw(st.sampled_from([None, "stranger", *sorted(members)])) for q in queues}
    answer = assign(queues, members, owners)
    assert set(answer) == members
    flat = [q for qs in answer.values() for q in qs]
    assert sorted(flat) == sorted(queues)
    sizes = [len(qs) for qs in answer.values()]
    assert max(sizes) - min(sizes) <= 1


@given(queue_sets, member_sets, st.randoms())
def test_same_answer_whatever_the_order(queues, members, rng) -> None:
    shuffled_queues, shuffled_members = list(queues), list(members)
    rng.shuffle(shuffled_queues)
    rng.shuffle(shuffled_members)
    owners = owners_of(assign(queues, members))
    assert assign(shuffled_queues, shuffled_members, owners) == assign(queues, members, owners)


@given(queue_sets, member_sets)
def test_a_balanced_assignment_stays_as_it_is(queues, members) -> None:
    first = assign(queues, members)
    assert assign(queues, members, owners_of(first)) == first


@given(queue_sets, member_sets, names)
def test_a_joining_member_takes_only_its_share(queues, members, newcomer) -> None:
    before = owners_of(assign(queues, members))
    after = owners_of(assign(queues, members | {newcomer}, before))
    moved = [q for q in queues if before[q] != after[q]]
    if newcomer in members:
        assert moved == []
    else:
        assert all(after[q] == newcomer for q in moved)
        assert len(moved) == len(queues) // (len(members) + 1)


@given(queue_sets, member_sets)
def test_a_leaving_member_moves_only_its_own(queues, members) -> None:
    before = owners_of(assign(queues, members))
    leaving = sorted(members)[0]
    if len(members) == 1:
        return
    after = owners_of(assign(queues, members - {leaving}, before))
    moved = [q for q in queues if before[q] != after[q]]
    assert all(before[q] == leaving for q in moved)


def test_four_queues_over_three_members() -> None:
    queues = ["q.cdr", "q.events", "q.or", "q.sq"]
    answer = assign(queues, ["rs-2", "rs-0", "rs-1"])
    assert answer == {"rs-0": ("q.cdr", "q.events"), "rs-1": ("q.or",), "rs-2": ("q.sq",)}
    assert assign(queues, []) == {}
