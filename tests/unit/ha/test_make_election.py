"""make_election, the standalone election and the delivery of role changes: no ZooKeeper."""

import threading
import time
from collections.abc import Callable

import pytest

from reporting.ha import Role, RoleChange, make_election
from reporting.ha.delivery import Delivery


def settings(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = dict(
        mode="standalone",
        name="rs-solo",
        role="",
        zookeeper="127.0.0.1:1",
        cluster="/c",
        session_timeout_s=2.0,
        grace_s=1.0,
        healthy=lambda: True,
        on_change=lambda change: None,
    )
    values.update(overrides)
    return values


def test_standalone_is_active_with_epoch_zero_and_says_so_once() -> None:
    changes: list[tuple[RoleChange, str]] = []
    election = make_election(
        **settings(on_change=lambda c: changes.append((c, threading.current_thread().name)))
    )
    election.start()
    election.stop()
    assert (election.role, election.epoch, election.holder) == (Role.ACTIVE, 0, "rs-solo")
    assert changes == [
        (RoleChange(Role.ACTIVE, 0, "rs-solo", "standalone"), "rs-solo-role-changes")
    ]


def test_standalone_keeps_its_role_when_fenced() -> None:
    election = make_election(**settings())
    election.start()
    election.lost_fence()
    election.stop()
    assert election.role is Role.ACTIVE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mode": "cluster"}, "ha.mode"),
        ({"mode": "segregated", "role": "secondary"}, "ha.role"),
    ],
)
def test_make_election_rejects_unknown_mode_and_role(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_election(**settings(**overrides))


def test_stop_of_an_election_never_started_returns() -> None:
    make_election(**settings(mode="shared")).stop()


def change(n: int) -> RoleChange:
    return RoleChange(Role.ACTIVE if n % 2 else Role.STANDBY, n, None, f"change {n}")


def deliver(on_change: Callable[[RoleChange], None], epochs: range) -> None:
    """Puts a change of each epoch to a Delivery, and stops it once all are delivered."""
    delivery = Delivery("rs-a", on_change)
    delivery.start()
    for n in epochs:
        delivery.put(change(n))
    assert delivery.wait_delivered(5)
    delivery.stop(5)


def test_delivery_in_order_on_its_own_thread_one_at_a_time() -> None:
    seen: list[tuple[int, str]] = []
    inside = threading.Semaphore(1)

    def on_change(c: RoleChange) -> None:
        assert inside.acquire(blocking=False), "two callbacks at once"
        seen.append((c.epoch, threading.current_thread().name))
        inside.release()

    deliver(on_change, range(50))
    assert seen == [(n, "rs-a-role-changes") for n in range(50)]


def test_a_failing_callback_does_not_stop_later_changes() -> None:
    seen: list[int] = []

    def on_change(c: RoleChange) -> None:
        if c.epoch == 1:
            raise RuntimeError("server could not stop its consumer")
        seen.append(c.epoch)

    deliver(on_change, range(3))
    assert seen == [0, 2]


def test_wait_delivered_waits_for_a_blocking_callback() -> None:
    release = threading.Event()
    delivery = Delivery("rs-a", lambda c: release.wait(5))
    delivery.start()
    delivery.put(change(0))
    assert not delivery.wait_delivered(0.1)
    release.set()
    started = time.monotonic()
    assert delivery.wait_delivered(5)
    assert time.monotonic() - started < 5
    delivery.stop(5)
