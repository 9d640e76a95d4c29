"""The server against the distributed systems operators scale out to: a three-member ZooKeeper
ensemble, and a PostgreSQL primary with a streaming standby that is promoted.

Each test keeps a ledger of receipted reports and checks the database for exactly-once at the
end; pauses and failover times are printed (run with -s to see them).
"""

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reporting.harness.ensemble import QuorumPeer, ZooKeeperEnsemble
from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.instance import Instance
from reporting.harness.pair import active_of
from reporting.harness.replica import PostgresPair
from reporting.harness.service import Service
from reporting.harness.waiting import wait_until

pytestmark = pytest.mark.integration

SESSION_S = 2.0
SAMPLE_EVERY_S = 0.05


@contextlib.contextmanager
def logs_on_failure(*servers: Service) -> Iterator[None]:
    """On a failure, print the tails of these servers' logs (shown with the failed test)."""
    try:
        yield
    except BaseException:
        for server in servers:
            print(f"\n--- {server.name} log ({server.log_path})\n{server.log_tail(60)}")
        raise


@pytest.fixture
def ensemble(tmp_path: Path) -> Iterator[ZooKeeperEnsemble]:
    with ZooKeeperEnsemble(tmp_path / "ensemble") as zk:
        yield zk


class Sampler:
    """Every instance's /status every 50 ms in a background thread: roles, and the total stored
    (each instance's last known figure, so one slow answer is not a drop)."""

    def __init__(self, pair: list[Instance]) -> None:
        self.pair = pair
        self.samples: list[tuple[float, dict[str, str], int]] = []
        self._stored = {instance.name: 0 for instance in pair}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            seen = {}
            for instance in self.pair:
                status = instance.try_status(timeout_s=0.5)
                seen[instance.name] = status["role"] if status else "unreachable"
                if status:
                    self._stored[instance.name] = status["stored"]
            self.samples.append((time.monotonic(), seen, sum(self._stored.values())))
            self._stop.wait(SAMPLE_EVERY_S)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def stored(self) -> int:
        return self.samples[-1][2] if self.samples else 0

    def doubled(self) -> list[dict[str, str]]:
        return [seen for _, seen, _ in self.samples if list(seen.values()).count("active") > 1]

    def handovers(self) -> int:
        """Times the active instance changed (samples with no active one skipped)."""
        actives = [n for _, seen, _ in self.samples for n, role in seen.items() if role == "active"]
        return sum(1 for a, b in itertools.pairwise(actives) if a != b)

    def longest_pause(self, start: float, end: float) -> float:
        """The longest time the total stored did not grow, among stretches within
        [start, end] or straddling either end."""
        growth = [t for (_, _, n0), (t, _, n1) in itertools.pairwise(self.samples) if n1 > n0]
        before = [t for t in growth if t < start]
        window = ([before[-1]] if before else []) + [t for t in growth if start <= t <= end]
        after = [t for t in growth if t > end]
        window += after[:1]
        return max((b - a for a, b in itertools.pairwise(window)), default=end - start)


def test_pair_on_an_ensemble_survives_leader_and_follower_kill_9(
    shared_pair, ensemble, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    on_ensemble = {"ha": {"zookeeper": ensemble.hosts, "session_timeout": SESSION_S}}
    pair = shared_pair(**{"rs-a": on_ensemble, "rs-b": on_ensemble})
    with logs_on_failure(*ensemble.members, *pair):
        pair.start()
        flow = Flow(
            [activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=5000, rate=200
        )
        flow.start()
        sampler = Sampler(pair).start()
        wait_until(lambda: sampler.stored() > 200, 30, "reports flowing")

        pauses = {}
        for victim_kind in ("leader", "follower"):
            victim = ensemble.leader() if victim_kind == "leader" else ensemble.followers()[0]
            assert victim is not None, f"no {victim_kind} in {ensemble}"
            sessions = _client_connections(victim)
            mark = sampler.stored()
            killed = time.monotonic()
            victim.kill()
            wait_until(lambda: ensemble.leader() is not None, 30, "a leader among the others")
            elected = time.monotonic() - killed
            wait_until(
                lambda mark=mark: sampler.stored() > mark + 100,
                30,
                "storing to go on",
                every_s=0.02,
            )
            resumed = time.monotonic()
            pauses[victim_kind] = (sessions, elected, sampler.longest_pause(killed, resumed))
            # Back as a follower, so the next kill still leaves a quorum.
            victim.start()
            assert victim.mode() == "follower"
        flow.join()
        sampler.stop()
        for victim_kind, (sessions, elected, pause) in pauses.items():
            print(
                f"\nensemble {victim_kind} kill -9 ({sessions} of the pair's 2 sessions on it):"
                f" a leader {elected:.2f} s after, storing paused {pause:.2f} s"
            )
        print(
            f"{len(sampler.samples)} samples, {len(sampler.doubled())} with two actives,"
            f" {sampler.handovers()} handovers"
        )
        assert len(sampler.samples) > 50
        assert not sampler.doubled(), f"two actives at once: {sampler.doubled()[:3]}"
        assert_exactly_once(pg_url, flow.ids())
        assert active_of(pair) is not None


def _client_connections(member: QuorumPeer) -> int:
    """Client connections a member serves, not counting the one asking."""
    for line in member.command("mntr").splitlines():
        key, _, value = line.partition("\t")
        if key == "zk_num_alive_connections":
            return int(value) - 1
    raise AssertionError(f"{member.name}: no zk_num_alive_connections in mntr")


@pytest.fixture
def sync_pair(tmp_path: Path) -> Iterator[PostgresPair]:
    with PostgresPair(tmp_path / "pg", synchronous=True) as databases:
        yield databases


def test_synchronous_standby_promoted_after_primary_kill_9_loses_nothing(
    standalone, sync_pair: PostgresPair, flowing
) -> None:
    url = sync_pair.create_database("reports_sync")
    server = standalone(database={"url": url})
    with logs_on_failure(sync_pair.primary, sync_pair.standby, server):
        server.start()
        flow = flowing([server], count=3000, rate=200)
        sync_pair.primary.kill()
        killed = time.monotonic()
        wait_until(lambda: server.status()["database"] == "down", 30, "the server to see it down")
        mark = server.status()["stored"]
        sync_pair.promote()
        promoted = time.monotonic()
        wait_until(
            lambda: server.status()["stored"] > mark and server.status()["database"] == "up",
            60,
            "the server to store into the promoted standby",
            every_s=0.02,
        )
        followed = time.monotonic() - promoted
        print(
            f"\nprimary kill -9, standby promoted {promoted - killed:.2f} s later:"
            f" storing again {followed:.2f} s after the promotion"
        )
        flow.join()
        # The URL names both servers; only the promoted standby is left to answer.
        assert_exactly_once(url, flow.ids())
        wait_until(lambda: server.status()["journal"]["pending"] == 0, 30, "the journal drained")


def test_asynchronous_standby_streams_and_is_promoted(tmp_path: Path) -> None:
    databases = PostgresPair(tmp_path / "pg", synchronous=False)
    try:
        databases.start()
        assert databases.streaming()
        with databases.primary.connect() as conn:
            conn.execute("CREATE TABLE marks (n int)")
            conn.execute("INSERT INTO marks VALUES (1)")
            conn.commit()
        # Asynchronous: the standby gets it soon, not before the commit returns.
        wait_until(lambda: _marks(databases) == 1, 30, "the row replayed on the standby")
        assert not databases.standby.accepts_writes()
        databases.primary.stop()
        databases.promote()
        assert databases.standby.accepts_writes()
    finally:
        databases.stop()


def _marks(databases: PostgresPair) -> int:
    try:
        with databases.standby.connect() as conn:
            return conn.execute("SELECT count(*) FROM marks").fetchone()[0]
    except Exception:  # not yet replayed: the table does not exist there
        return 0
