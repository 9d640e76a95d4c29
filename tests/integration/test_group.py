"""Group mode: queues spread over three instances on one cluster path, against the real servers.

Ownership is read from every instance's /status: a queue is owned by the instance that says
`role: active` for it. Each test keeps a ledger and checks the database for exactly-once.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reporting.harness.commands import run_command
from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.group import spread
from reporting.harness.pair import short_name as name
from reporting.harness.waiting import wait_until
from storage.reports import kind_of
from tests.integration.conftest import start_group

pytestmark = pytest.mark.integration

SESSION_S = 2.0
# What a move may take beyond the session's expiry: the watch firing, the new owner draining
# what the dead one journalled, and its consumer subscribing.
REBALANCE_S = 2.0


def test_queues_spread_over_three_instances(
    group, activemq, pg_url, queues, queue_prefix, tmp_path: Path
) -> None:
    members, assignment = start_group(group, 3, queues)
    counts = sorted(list(assignment.values()).count(name(i)) for i in members)
    assert counts == [1, 1, 2], f"4 queues over 3 instances: {assignment}"
    flow = Flow(
        [activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=2000, rate=0
    ).start()
    assert_exactly_once(pg_url, flow.join())
    # Each queue's reports were stored by its owner alone.
    stored = {name(i): i.status()["queues"] for i in members}
    for queue, owner in assignment.items():
        assert stored[owner][queue]["stored"] == 500
        assert all(s[queue]["stored"] == 0 for name, s in stored.items() if name != owner)
    # The status command shows who owns what, and exits 0 with every queue owned once.
    last = members[-1]
    command = [sys.executable, "-m", "reporting.cli", "status", "--config", str(last.config_path)]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=30)
    print(f"\n{shown.stdout}")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    for instance in members:
        kinds = sorted(kind_of(q) for q, o in assignment.items() if o == name(instance))
        line = next(ln for ln in shown.stdout.splitlines() if ln.startswith(name(instance)))
        assert ",".join(kinds) in line, shown.stdout
    rows = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "reporting.cli",
                "status",
                "--json",
                "--config",
                str(last.config_path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    )
    assert {r["name"]: sorted(r["owned"]) for r in rows} == {
        name(i): sorted(q for q, o in assignment.items() if o == name(i)) for i in members
    }


def test_kill_9_moves_the_queues_of_the_dead(group, pg_url, queues, flowing) -> None:
    members, assignment = start_group(group, 3, queues)
    flow = flowing(members, count=3000)
    victim = next(i for i in members if list(assignment.values()).count(name(i)) == 2)
    orphans = [q for q, o in assignment.items() if o == name(victim)]
    killed = time.monotonic()
    victim.kill()
    survivors = [i for i in members if i is not victim]
    after = wait_until(lambda: spread(survivors, queues), 30, "the dead one's queues to move")
    took = time.monotonic() - killed
    print(f"\nkill -9: {orphans} owned again {took:.2f} s after the kill")
    assert all(after[q] != name(victim) for q in orphans)
    assert took <= SESSION_S + REBALANCE_S, f"the queues moved {took:.2f} s after the kill"
    assert_exactly_once(pg_url, flow.join())


def test_sigterm_hands_the_queues_over_before_any_session_expires(
    group, pg_url, queues, flowing
) -> None:
    members, assignment = start_group(group, 3, queues)
    flow = flowing(members, count=3000)
    leaving = members.pop(0)
    # Timed from the signal, not from the process's exit, which the hand-over does not wait on.
    stopped = time.monotonic()
    os.kill(leaving.pid, signal.SIGTERM)
    wait_until(lambda: spread(members, queues), 30, "the queues to move", every_s=0.02)
    took = time.monotonic() - stopped
    leaving.stop()
    print(f"\nSIGTERM: queues of {name(leaving)} owned again {took:.2f} s after the signal")
    assert took < SESSION_S, f"the hand-over took {took:.2f} s, as long as a session expiry"
    assert_exactly_once(pg_url, flow.join())


def test_an_instance_joining_takes_its_share(group, pg_url, queues, flowing) -> None:
    members, before = start_group(group, 2, queues)
    flow = flowing(members, count=3000)
    newcomer = group("rs-2")
    newcomer.start()
    members.append(newcomer)
    joined = time.monotonic()
    assignment = wait_until(lambda: spread(members, queues), 30, "a share for the newcomer")
    print(f"\njoin: rebalanced {time.monotonic() - joined:.2f} s after the start")
    # Sticky: the newcomer takes one queue (4 over 3: shares 2, 1, 1); nothing else moves.
    moved = {q: o for q, o in assignment.items() if before[q] != o}
    assert list(moved.values()) == [name(newcomer)], f"{before} -> {assignment}"
    assert_exactly_once(pg_url, flow.join())


def test_database_down_then_replay_of_every_queue_journal(
    group, activemq, postgres, pg_url, queues, queue_prefix, tmp_path: Path
) -> None:
    """With the database down, each owner buffers its queues in their own journal folders; a
    replay with any member's config drains every queue's journal."""
    members, _ = start_group(group, 2, queues)
    wait_until(lambda: all(i.status()["database"] == "up" for i in members), 30, "database: up")
    postgres.kill()
    flow = Flow([activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=400, rate=0)
    flow.start().join()

    def pending() -> int:
        return sum(i.status()["journal"]["pending"] for i in members)

    wait_until(lambda: pending() >= 400, 60, "the backlog journalled")
    assert {i.status()["database"] for i in members} == {"down"}
    for instance in members:
        instance.kill()
    postgres.restart()
    command = [sys.executable, "-m", "reporting.cli", "replay", "--config"]
    result = subprocess.run(
        [*command, str(members[0].config_path), "--timeout", "120"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    # One queue after the other, each with its 100 reports.
    replayed = re.findall(r"replayed (\d+) records \((\d+) new reports\)", result.stderr)
    assert replayed == [("100", "100")] * len(queues), result.stderr
    assert_exactly_once(pg_url, flow.ids(), timeout_s=5)


def test_a_member_listing_other_queues_is_reported(group, queues) -> None:
    first = group("rs-0")
    odd = group("rs-odd", broker={"queues": queues[:3]})
    first.start()
    odd.start()
    wait_until(lambda: first.status()["mismatched"] == ["rs-odd"], 30, "rs-odd reported")
    # Each finds out on its own: rs-odd may compare a moment after rs-0 has.
    wait_until(lambda: odd.status()["mismatched"] == ["rs-0"], 30, "rs-0 reported")
    assert "rs-odd lists other queues than this instance" in first.log_tail(200)


def test_check_config_refuses_beside_a_running_member_and_leaves_no_lock_files(
    group, queues
) -> None:
    """A member writes every queue's journal under its own name: check-config --local with its
    config finds it running, and takes no lock of a name nobody writes under."""
    (member,), _ = start_group(group, 1, queues)
    done = run_command("check-config", "--local", "--config", str(member.config_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"writer {name(member)!r} is already running as pid {member.pid}" in done.stdout
    locks = {p.name for p in member.config_path.parent.parent.rglob("locks/*.lock")}
    assert locks == {f"{name(member)}.lock"}, locks
