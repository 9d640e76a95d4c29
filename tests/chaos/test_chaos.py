"""Chaos rounds against a pair on the session's ActiveMQ, ZooKeeper and PostgreSQL.

The instances run as local processes, or with REPORTING_TEST_BACKEND=containers (as the
session's servers and the segregated backup's broker) in containers of the server image, where
kill -9 is `docker kill`, SIGSTOP `docker pause` and a restart `docker start`.

Bounded for the default run: RUNS seeds of a shared-storage pair and one of a segregated pair,
REPORTING_CHAOS_ROUNDS faults each (4 by default), on PostgreSQL; under the mariadb marker, the
first seed of a shared-storage pair on MariaDB. The first seed comes from
REPORTING_CHAOS_SEED, or at random; the others follow it. Each run prints its seed, its summary
and the path of its timeline PNG (run with -s to see them). A failing run is reproduced with
REPORTING_CHAOS_SEED=<its seed> and the test id (-k shared-run0). For long runs, see soak.py.
"""

import os
import random
from pathlib import Path

import pytest

from reporting.harness.pair import Pair
from tests.chaos.pair import chaos_pair
from tests.chaos.result import ChaosResult
from tests.chaos.runner import ChaosRun

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

RUNS = 2
ROUNDS = int(os.environ.get("REPORTING_CHAOS_ROUNDS", "4"))
FIRST_SEED = int(os.environ.get("REPORTING_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
TIMEOUT_S = 120 + ROUNDS * 90
# The shared pair's runs: (run, the fixture of its database server).
SHARED_RUNS = [
    *(pytest.param(run, "postgres", id=f"shared-run{run}") for run in range(RUNS)),
    pytest.param(0, "mariadb", id="shared-mariadb-run0", marks=pytest.mark.mariadb),
]


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize(("run", "server"), SHARED_RUNS)
def test_shared_pair_survives_random_faults(
    run: int,
    server: str,
    activemq,
    zookeeper,
    instance_class,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    pair = chaos_pair(
        tmp_path / "pair",
        mode="shared",
        brokers=[activemq],
        zookeeper=zookeeper,
        database=request.getfixturevalue(server),
        instance_type=instance_class,
    )
    check(chaos(FIRST_SEED + run, pair, tmp_path))


@pytest.mark.timeout(TIMEOUT_S)
def test_segregated_pair_survives_random_faults(
    activemq, backup_broker, zookeeper, postgres, instance_class, tmp_path: Path
) -> None:
    pair = chaos_pair(
        tmp_path / "pair",
        mode="segregated",
        brokers=[activemq, backup_broker],
        zookeeper=zookeeper,
        database=postgres,
        instance_type=instance_class,
    )
    check(chaos(FIRST_SEED, pair, tmp_path))


def chaos(seed: int, pair: Pair, workdir: Path) -> ChaosResult:
    print(f"\nchaos seed {seed}; reproduce with REPORTING_CHAOS_SEED={seed}")
    with pair:
        result = ChaosRun(seed, pair=pair, workdir=workdir, rounds=ROUNDS).run()
    print(f"timeline: {result.timeline_png}")
    print("instance logs: " + ", ".join(str(i.log_path) for i in pair.instances))
    return result


def check(result: ChaosResult) -> None:
    explain = f"{failures(result)}\n{result.summary()}"
    assert result.sent > 0, explain
    assert not result.missing, explain
    assert not result.duplicated, explain
    assert not result.two_active_samples, explain
    assert not result.unsettled, explain
    assert not result.stranded, explain
    assert not result.errors, explain
    assert not result.late_failovers, explain


def failures(result: ChaosResult) -> str:
    found = {
        "missing": len(result.missing),
        "duplicated": len(result.duplicated),
        "ticks with two actives": len(result.two_active_samples),
        "did not settle": result.unsettled,
        "stranded": result.stranded,
        "errors": result.errors,
        "late failovers": result.late_failovers,
    }
    return "; ".join(f"{what}: {value}" for what, value in found.items() if value) or "no failure"
