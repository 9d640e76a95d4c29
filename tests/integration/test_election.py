"""Elections against a real ZooKeeper: one active, rising epochs, suspension before takeover.

Each test has its own cluster path. Takeover times are printed (run with -s to see them).
"""

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient

from reporting.ha import Election, Role, RoleChange, make_election
from reporting.harness import TcpProxy, ZooKeeper
from reporting.harness.waiting import holds_within, wait_until

pytestmark = pytest.mark.integration

SESSION_S = 2.0
GRACE_S = 1.0


class Recorder:
    """on_change of one election: every change with the monotonic time it was delivered."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, RoleChange]] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, change: RoleChange) -> None:
        with self._lock:
            self.changes.append((time.monotonic(), change))
            self.threads.add(threading.current_thread().name)

    def first(self, predicate: Callable[[RoleChange], bool], after: float = 0.0) -> float | None:
        """Time of the first change after `after` that matches, or None."""
        with self._lock:
            return next((t for t, c in self.changes if t >= after and predicate(c)), None)

    def since(self, after: float) -> list[RoleChange]:
        with self._lock:
            return [c for t, c in self.changes if t >= after]


# The fixtures' factories: elect(name, hosts, ...) -> (election, recorder); tcp_proxy(host, port).
Elect = Callable[..., tuple[Election, Recorder]]
ProxyTo = Callable[[str, int], TcpProxy]


def happens_within(condition: Callable[[], Any], window_s: float) -> bool:
    """Whether `condition` becomes true during the window: for what must not happen."""
    return holds_within(condition, window_s, every_s=0.02)


def is_active(change: RoleChange) -> bool:
    return change.role is Role.ACTIVE


def is_standby(change: RoleChange) -> bool:
    return change.role is Role.STANDBY


@pytest.fixture
def cluster(zookeeper: ZooKeeper) -> Iterator[str]:
    """The test's own cluster path, removed after the elections on it have stopped."""
    path = "/rstest/" + uuid.uuid4().hex
    yield path
    client = KazooClient(hosts=zookeeper.hosts, timeout=SESSION_S)
    client.start(timeout=30)
    try:
        client.retry(client.delete, path, recursive=True)
    finally:
        client.stop()
        client.close()


@pytest.fixture
def observer(zookeeper: ZooKeeper) -> Iterator[KazooClient]:
    """A client of the test's own, to look at the nodes the elections keep."""
    client = KazooClient(hosts=zookeeper.hosts, timeout=SESSION_S)
    client.start(timeout=30)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def elect(cluster: str) -> Iterator[Elect]:
    """Factory: elect(name, hosts, mode=..., ...) -> a started election and its recorder."""
    started: list[Election] = []

    def make(
        name: str,
        hosts: str,
        *,
        mode: str = "shared",
        role: str = "",
        healthy: Callable[[], bool] = lambda: True,
        session_timeout_s: float = SESSION_S,
    ) -> tuple[Election, Recorder]:
        recorder = Recorder()
        election = make_election(
            mode=mode,
            name=name,
            role=role,
            zookeeper=hosts,
            cluster=cluster,
            session_timeout_s=session_timeout_s,
            grace_s=GRACE_S,
            healthy=healthy,
            on_change=recorder,
        )
        election.start()
        started.append(election)
        return election, recorder

    yield make
    for election in started:
        election.stop()


def lock_contenders(observer: KazooClient, cluster: str) -> list[str]:
    return observer.Lock(f"{cluster}/lock").contenders()


def test_one_active_and_epochs_rise_across_failovers(
    zookeeper: ZooKeeper, elect: Elect, cluster: str
) -> None:
    a, rec_a = elect("rs-a", zookeeper.hosts)
    wait_until(lambda: a.role is Role.ACTIVE, 30, "rs-a active")
    b, rec_b = elect("rs-b", zookeeper.hosts)
    wait_until(lambda: b.holder == "rs-a", 10, "rs-b to see rs-a as holder")
    assert (a.role, b.role) == (Role.ACTIVE, Role.STANDBY)
    # Each instance first hears it is standby, with what it waits for (delivered on the
    # election's own thread, which may not have run yet when the holder is seen).
    wait_until(lambda: rec_b.since(0), 5, "rs-b told it is standby")
    assert rec_b.since(0)[0] == RoleChange(Role.STANDBY, 0, None, f"contending for {cluster}/lock")
    epochs = [a.epoch]

    # Clean hand-over: stop() of the active, the standby takes the lock.
    stopped_at = time.monotonic()
    a.stop()
    wait_until(lambda: rec_b.first(is_active), 5, "rs-b active")
    took_s = rec_b.first(is_active) - stopped_at
    print(f"\nshared: stop() of the active -> other active in {took_s * 1000:.0f} ms")
    assert took_s < 1.0
    # The stopped one told its server to stand by before the lock was given up.
    assert rec_a.first(lambda c: c.reason == "stopping") < rec_b.first(is_active)
    epochs.append(b.epoch)

    c, rec_c = elect("rs-c", zookeeper.hosts)
    wait_until(lambda: c.holder == "rs-b", 10, "rs-c to see rs-b as holder")
    stopped_at = time.monotonic()
    b.stop()
    # The role flips before the change is delivered: wait for the delivery itself.
    wait_until(lambda: rec_c.first(is_active), 5, "rs-c told it is active")
    epochs.append(c.epoch)

    assert epochs == sorted(set(epochs)), f"epochs must rise strictly: {epochs}"
    assert [ch.epoch for ch in rec_c.since(0) if is_active(ch)] == [epochs[-1]]
    assert b.role is Role.STANDBY and c.holder == "rs-c"
    # Every change reached the server on the election's own delivery thread.
    for rec, name in ((rec_a, "rs-a"), (rec_b, "rs-b"), (rec_c, "rs-c")):
        assert rec.threads == {f"{name}-role-changes"}


def test_suspended_holder_stands_by_before_the_other_takes_over(
    zookeeper: ZooKeeper, tcp_proxy: ProxyTo, elect: Elect, observer: KazooClient, cluster: str
) -> None:
    proxy_a = tcp_proxy("127.0.0.1", zookeeper.port)
    proxy_b = tcp_proxy("127.0.0.1", zookeeper.port)
    a, rec_a = elect("rs-a", proxy_a.host)
    # Delivered, not just decided: the changes since the cut must not include these.
    wait_until(lambda: rec_a.first(is_active), 30, "rs-a told it is active")
    b, rec_b = elect("rs-b", proxy_b.host)
    wait_until(lambda: b.holder == "rs-a", 10, "rs-b to see rs-a as holder")
    old_epoch = a.epoch

    cut_at = time.monotonic()
    proxy_a.blackhole()
    wait_until(lambda: rec_b.first(is_active, cut_at), SESSION_S + 5, "rs-b active")
    standby_at = rec_a.first(is_standby, cut_at)
    active_at = rec_b.first(is_active, cut_at)
    print(
        f"\nshared: rs-a cut off -> rs-a standby after {(standby_at - cut_at) * 1000:.0f} ms, "
        f"rs-b active after {(active_at - cut_at) * 1000:.0f} ms (session {SESSION_S} s)"
    )
    # Fencing by timing: the cut-off holder stood by before the lock could pass on.
    assert standby_at < active_at
    assert rec_a.since(cut_at)[0].reason == "zookeeper connection suspended"
    assert b.epoch > old_epoch

    healed_at = time.monotonic()
    proxy_a.heal()
    # Its session expired while cut off: it joins the line again behind rs-b.
    wait_until(
        lambda: lock_contenders(observer, cluster) == ["rs-b", "rs-a"], 15, "rs-a back in line"
    )
    wait_until(lambda: a.holder == "rs-b", 5, "rs-a to see rs-b as holder")
    assert a.role is Role.STANDBY and b.role is Role.ACTIVE
    assert not any(is_active(c) for c in rec_a.since(healed_at))

    # stop() of an instance cut off from ZooKeeper returns promptly all the same.
    proxy_a.blackhole()
    wait_until(lambda: not a.client.connected, SESSION_S + 3, "rs-a cut off")
    stopping_at = time.monotonic()
    a.stop()
    stop_s = time.monotonic() - stopping_at
    print(f"shared: stop() while cut off from zookeeper took {stop_s * 1000:.0f} ms")
    assert stop_s < 1.0
    assert b.role is Role.ACTIVE


def test_holder_back_within_its_session_keeps_the_lock_and_the_epoch(
    zookeeper: ZooKeeper, tcp_proxy: ProxyTo, elect: Elect
) -> None:
    # A longer session, so that healing the path as soon as rs-a has stood by saves it.
    session_s = 6.0
    proxy_a = tcp_proxy("127.0.0.1", zookeeper.port)
    a, rec_a = elect("rs-a", proxy_a.host, session_timeout_s=session_s)
    # Delivered, not just decided: the changes since the cut must not include these.
    wait_until(lambda: rec_a.first(is_active), 30, "rs-a told it is active")
    b, rec_b = elect("rs-b", zookeeper.hosts, session_timeout_s=session_s)
    wait_until(lambda: b.holder == "rs-a", 10, "rs-b to see rs-a as holder")
    epoch = a.epoch

    cut_at = time.monotonic()
    proxy_a.blackhole()
    wait_until(lambda: a.role is Role.STANDBY, session_s, "rs-a standby")
    proxy_a.heal()
    wait_until(lambda: a.role is Role.ACTIVE, session_s, "rs-a active again")
    assert time.monotonic() - cut_at < session_s, "the session should have survived"
    # The role flips before the change is delivered: wait for the delivery itself.
    wait_until(lambda: rec_a.first(is_active, cut_at), 5, "rs-a told it is active again")
    back = rec_a.since(cut_at)
    assert [(c.role, c.epoch) for c in back] == [(Role.STANDBY, epoch), (Role.ACTIVE, epoch)]
    assert back[1].reason == "zookeeper connection restored, still holding the lock"
    assert b.role is Role.STANDBY and not any(is_active(c) for c in rec_b.since(0))


def test_zookeeper_killed_and_restarted_never_two_active(
    zookeeper: ZooKeeper, elect: Elect
) -> None:
    a, _ = elect("rs-a", zookeeper.hosts)
    b, _ = elect("rs-b", zookeeper.hosts)
    wait_until(lambda: Role.ACTIVE in (a.role, b.role), 30, "one active")

    samples: list[tuple[Role, Role]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((a.role, b.role))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, name="role-sampler")
    sampler.start()
    try:
        zookeeper.kill()
        wait_until(
            lambda: (a.role, b.role) == (Role.STANDBY, Role.STANDBY), SESSION_S + 3, "both standby"
        )
        zookeeper.restart()
        wait_until(lambda: Role.ACTIVE in (a.role, b.role), 30, "one active again")
        # Keep sampling a little after recovery: a late second activation would show here.
        assert not happens_within(lambda: a.role is b.role is Role.ACTIVE, 2 * SESSION_S)
    finally:
        done.set()
        sampler.join()
    assert (Role.ACTIVE, Role.ACTIVE) not in samples
    assert (Role.STANDBY, Role.STANDBY) in samples
    print(f"\nshared: zookeeper kill/restart, {len(samples)} samples, never two active")


def test_lost_fence_stands_by_and_contends_again(zookeeper: ZooKeeper, elect: Elect) -> None:
    a, rec_a = elect("rs-a", zookeeper.hosts)
    wait_until(lambda: a.role is Role.ACTIVE, 30, "rs-a active")
    b, rec_b = elect("rs-b", zookeeper.hosts)
    wait_until(lambda: b.holder == "rs-a", 10, "rs-b to see rs-a as holder")

    a.lost_fence(a.epoch - 1)  # about an older epoch: nothing to do
    assert a.role is Role.ACTIVE
    fenced_epoch = a.epoch
    a.lost_fence()
    assert a.role is Role.STANDBY
    wait_until(lambda: b.role is Role.ACTIVE, 5, "rs-b active")
    assert b.epoch > fenced_epoch
    wait_until(lambda: a.holder == "rs-b", 5, "rs-a to see rs-b as holder")
    # The role flips before the change is delivered: wait for the delivery itself.
    wait_until(lambda: rec_a.first(lambda c: c.reason == "fenced"), 5, "rs-a told it is fenced")
    assert [c.reason for c in rec_a.since(0)][1:] == ["acquired the lock", "fenced"]


def test_segregated_backup_covers_for_the_primary_and_drains_when_it_returns(
    zookeeper: ZooKeeper, elect: Elect
) -> None:
    primary, _ = elect("rs-a", zookeeper.hosts, mode="segregated", role="primary")
    wait_until(lambda: primary.role is Role.ACTIVE, 30, "primary active")
    backup, rec_b = elect("rs-b", zookeeper.hosts, mode="segregated", role="backup")
    wait_until(lambda: backup.holder == "rs-a", 10, "backup to see the primary")
    assert not happens_within(lambda: backup.role is Role.ACTIVE, 2 * GRACE_S)

    stopped_at = time.monotonic()
    primary.stop()
    wait_until(lambda: rec_b.first(is_active), GRACE_S + 5, "backup active")
    took_s = rec_b.first(is_active) - stopped_at
    print(f"\nsegregated: primary stop() -> backup active in {took_s * 1000:.0f} ms")
    assert GRACE_S <= took_s < GRACE_S + 1.0
    # Its own counter: 1 taken for its own journal once connected, 2 on taking the role.
    assert (backup.epoch, backup.holder) == (2, "rs-b")

    back_at = time.monotonic()
    primary2, _ = elect("rs-a", zookeeper.hosts, mode="segregated", role="primary")
    wait_until(lambda: primary2.role is Role.ACTIVE, 10, "primary active again")
    assert primary2.epoch == 2  # its own counter, bumped on each activation
    wait_until(lambda: rec_b.first(lambda c: c.drain_first, back_at), 5, "drain_first")
    drain = rec_b.since(back_at)[0]
    assert (drain.role, drain.reason, drain.holder) == (Role.STANDBY, "primary is back", "rs-a")
    # Draining its own broker: still active until the server says it is done.
    assert backup.role is Role.ACTIVE
    backup.stood_down()
    assert backup.role is Role.STANDBY
    wait_until(lambda: len(rec_b.since(back_at)) == 2, 5, "stand-down delivered")
    assert rec_b.since(back_at)[1].role is Role.STANDBY
    assert not rec_b.since(back_at)[1].drain_first


def test_unhealthy_primary_gives_the_node_up(
    zookeeper: ZooKeeper, elect: Elect, observer: KazooClient, cluster: str
) -> None:
    health = threading.Event()
    health.set()
    primary, rec_p = elect(
        "rs-a", zookeeper.hosts, mode="segregated", role="primary", healthy=health.is_set
    )
    wait_until(lambda: primary.role is Role.ACTIVE, 30, "primary active")
    backup, rec_b = elect("rs-b", zookeeper.hosts, mode="segregated", role="backup")
    wait_until(lambda: backup.holder == "rs-a", 10, "backup to see the primary")
    assert observer.get(f"{cluster}/primary")[0] == b"rs-a"

    health.clear()
    wait_until(lambda: primary.role is Role.STANDBY, 5, "primary standby")
    wait_until(lambda: observer.exists(f"{cluster}/primary") is None, 5, "node given up")
    # The role flips before the change is delivered: wait for the delivery itself.
    unhealthy = f"unhealthy, giving {cluster}/primary up"
    wait_until(lambda: rec_p.first(lambda c: c.reason == unhealthy), 5, "primary told to stand by")
    assert rec_p.since(0)[-1].reason == unhealthy
    wait_until(lambda: backup.role is Role.ACTIVE, GRACE_S + 5, "backup active")

    health.set()
    wait_until(lambda: primary.role is Role.ACTIVE, 5, "primary active again")
    assert primary.epoch == 2
    wait_until(lambda: rec_b.first(lambda c: c.drain_first), 5, "backup told to drain")


def test_segregated_primary_keeps_its_role_while_cut_off(
    zookeeper: ZooKeeper, tcp_proxy: ProxyTo, elect: Elect, observer: KazooClient, cluster: str
) -> None:
    proxy = tcp_proxy("127.0.0.1", zookeeper.port)
    primary, rec_p = elect("rs-a", proxy.host, mode="segregated", role="primary")
    wait_until(lambda: primary.role is Role.ACTIVE, 30, "primary active")
    backup, rec_b = elect("rs-b", zookeeper.hosts, mode="segregated", role="backup")
    wait_until(lambda: backup.holder == "rs-a", 10, "backup to see the primary")

    proxy.blackhole()
    # The session expires, the node with it; the backup helps out with its own broker.
    wait_until(lambda: backup.role is Role.ACTIVE, SESSION_S + GRACE_S + 5, "backup active")
    assert primary.role is Role.ACTIVE
    assert len(rec_p.since(0)) == 2  # standby at start, then active

    healed_at = time.monotonic()
    proxy.heal()
    wait_until(lambda: observer.exists(f"{cluster}/primary") is not None, 15, "node created again")
    wait_until(lambda: rec_b.first(lambda c: c.drain_first, healed_at), 5, "backup told to drain")
    assert primary.role is Role.ACTIVE and len(rec_p.since(0)) == 2


def test_segregated_backup_keeps_its_role_while_cut_off(
    zookeeper: ZooKeeper, tcp_proxy: ProxyTo, elect: Elect
) -> None:
    proxy = tcp_proxy("127.0.0.1", zookeeper.port)
    backup, rec_b = elect("rs-b", proxy.host, mode="segregated", role="backup")
    # No primary at all: the backup covers once the grace period is over.
    wait_until(lambda: backup.role is Role.ACTIVE, GRACE_S + 10, "backup active")

    proxy.blackhole()
    wait_until(lambda: not backup.client.connected, SESSION_S + 3, "backup cut off")
    healed_at = time.monotonic()
    proxy.heal()
    wait_until(lambda: backup.client.connected, 15, "backup connected again")
    # It could not know whether the primary came back, and in segregated mode it need not.
    assert backup.role is Role.ACTIVE and rec_b.since(healed_at) == []
    primary, _ = elect("rs-a", zookeeper.hosts, mode="segregated", role="primary")
    wait_until(lambda: rec_b.first(lambda c: c.drain_first, healed_at), 10, "drain_first")
