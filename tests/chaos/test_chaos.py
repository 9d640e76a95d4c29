"""Chaos rounds against a shared-storage pair on the session's ActiveMQ, ZooKeeper and PostgreSQL.

Bounded for the default run: RUNS seeds of REPORTING_CHAOS_ROUNDS faults each (4 by default).
The first seed comes from REPORTING_CHAOS_SEED, or at random; the others follow it. Each run
prints its seed, its summary and the path of its timeline PNG (run with -s to see them). A failing
run is reproduced with REPORTING_CHAOS_SEED=<its seed> and -k run0. For long runs, see soak.py.
"""

import os
import random
from pathlib import Path

import pytest

from tests.chaos.pair import build_shared_pair
from tests.chaos.runner import ChaosResult, ChaosRun

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

RUNS = 2
ROUNDS = int(os.environ.get("REPORTING_CHAOS_ROUNDS", "4"))
FIRST_SEED = int(os.environ.get("REPORTING_CHAOS_SEED") or random.SystemRandom().randrange(10**6))


@pytest.mark.timeout(120 + ROUNDS * 90)
@pytest.mark.parametrize("run", range(RUNS), ids=lambda i: f"run{i}")
def test_shared_pair_survives_random_faults(
    run: int, activemq, zookeeper, postgres, tmp_path: Path
) -> None:
    seed = FIRST_SEED + run
    print(f"\nchaos seed {seed}; reproduce with REPORTING_CHAOS_SEED={seed} and -k run0")
    with build_shared_pair(
        tmp_path / "pair", broker=activemq, zookeeper=zookeeper, postgres=postgres
    ) as pair:
        result = ChaosRun(seed, pair=pair, workdir=tmp_path, rounds=ROUNDS).run()
        logs = "\n".join(f"  {i.log_path}" for i in pair.instances)
    print(f"timeline: {result.timeline_png}")
    explain = f"{_failures(result)}\n{result.summary()}\ninstance logs:\n{logs}"
    assert result.sent > 0, explain
    assert not result.missing, explain
    assert not result.duplicated, explain
    assert not result.two_active_samples, explain
    assert not result.unsettled, explain
    assert not result.errors, explain
    assert not result.late_failovers, explain


def _failures(result: ChaosResult) -> str:
    found = [
        f"{len(result.missing)} missing" if result.missing else "",
        f"{len(result.duplicated)} duplicated" if result.duplicated else "",
        f"{len(result.two_active_samples)} ticks with two actives"
        if result.two_active_samples
        else "",
        f"did not settle: {result.unsettled}" if result.unsettled else "",
        f"errors: {result.errors}" if result.errors else "",
        f"late failovers: {result.late_failovers}" if result.late_failovers else "",
    ]
    return "; ".join(f for f in found if f) or "no failure"
