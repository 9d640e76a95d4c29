"""Attacks on `replay`'s wait for a stopped holder's session: replay polls up to the session
ZooKeeper granted + 2 s (or its --timeout) for the role's holder to disappear before it refuses,
and refuses beside any process that writes the journal under another name.

Only the public interface: the CLI, its TOML, signals, and the harness's TCP proxy in front of
ZooKeeper. Every test that moves reports keeps a ledger of receipted ids and checks PostgreSQL
for exactly-once.
"""

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reporting.harness.commands import run_command
from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.instance import Instance, merge, to_toml
from reporting.harness.pair import roles
from reporting.harness.waiting import wait_until
from reporting.harness.zookeeper import ZooKeeper
from tests.integration.conftest import start_group

pytestmark = pytest.mark.integration


def send(broker: Any, tmp_path: Path, queue_prefix: str, *, count: int, name: str) -> set[str]:
    flow = Flow([broker.host], tmp_path / name, queue_prefix=queue_prefix, count=count, rate=0)
    flow.start().join()
    return flow.ids()


def replay(config_path: Path, timeout_s: float, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_command("replay", "--config", str(config_path), *extra, timeout_s=timeout_s)


def replay_in_background(config_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reporting.cli", "replay", "--config", str(config_path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout_s: float = 60) -> tuple[int, str]:
    """The replay's exit code and stderr; one that has not ended within `timeout_s` is killed and
    reported as a hang."""
    try:
        _, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        spy = Path(sys.executable).parent / "py-spy"
        if spy.exists():
            dump = subprocess.run(
                [str(spy), "dump", "--pid", str(process.pid)], capture_output=True, text=True
            )
            print(f"replay {process.pid} hung:\n{dump.stdout}{dump.stderr}")
        process.kill()
        _, err = process.communicate()
        raise AssertionError(
            f"replay hung: no exit within {timeout_s:g} s; stderr: {err!r}"
        ) from None
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, err


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def config_copy(instance: Instance, path: Path, **overrides: Any) -> Path:
    """The instance's own config (same name, same journal) with `overrides` laid over it."""
    path.write_text(to_toml(merge(instance.config, overrides)))
    return path


def active(instance: Instance) -> bool:
    return roles([instance])[instance.name] == "active"


# -- shared mode: the standby takes the role within the session ---------------------------------


def test_kill_9_of_the_active_beside_a_running_standby_refuses_naming_the_standby(
    shared_pair, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    a, b = shared_pair()
    a.start()
    wait_until(lambda: active(a), 30, "rs-a active")
    b.start()
    ids = send(activemq, tmp_path, queue_prefix, count=100, name="ids")
    assert_exactly_once(pg_url, ids, timeout_s=60)
    a.kill()
    done = replay(a.config_path, 60)
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr)
    assert "rs-b holds the role" in line, line
    wait_until(lambda: active(b), 30, "rs-b active")
    more = send(activemq, tmp_path, queue_prefix, count=100, name="more")
    assert_exactly_once(pg_url, ids | more, timeout_s=60)


# -- SIGSTOP: the session expires while the writer still lives ----------------------------------


def test_sigstopped_active_its_session_gone_is_still_kept_apart_by_its_writer_lock(
    shared_pair, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    a, _ = shared_pair()
    a.start()
    wait_until(lambda: active(a), 30, "rs-a active")
    ids = send(activemq, tmp_path, queue_prefix, count=100, name="ids")
    assert_exactly_once(pg_url, ids, timeout_s=60)
    a.pause()
    try:
        done = replay(a.config_path, 60)
    finally:
        a.resume()
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr)
    assert f"pid {a.pid}" in line, line
    wait_until(lambda: active(a), 30, "rs-a active again")
    more = send(activemq, tmp_path, queue_prefix, count=100, name="more")
    assert_exactly_once(pg_url, ids | more, timeout_s=60)


def test_sigstopped_active_resumed_during_the_wait(
    shared_pair, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    """Resumed within the wait: the instance is back in the line (or on its lock) and replay
    refuses; nothing is lost or doubled."""
    a, _ = shared_pair(**{"rs-a": {"ha": {"session_timeout": 4.0}}})
    a.start()
    wait_until(lambda: active(a), 30, "rs-a active")
    ids = send(activemq, tmp_path, queue_prefix, count=100, name="ids")
    a.pause()
    running = replay_in_background(a.config_path)
    try:
        # Resumed well within its 4 s session: it never lost it.
        a.resume()
        code, err = finish(running)
    finally:
        if running.poll() is None:
            running.kill()
    assert code == 1, err
    line = one_line(err)
    assert "rs-a holds the role" in line or f"pid {a.pid}" in line, line
    more = send(activemq, tmp_path, queue_prefix, count=100, name="more")
    assert_exactly_once(pg_url, ids | more, timeout_s=60)


def test_replay_as_the_standby_beside_a_sigstopped_active_of_the_shared_journal(
    shared_pair, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    a, b = shared_pair()
    a.start()
    wait_until(lambda: active(a), 30, "rs-a active")
    ids = send(activemq, tmp_path, queue_prefix, count=100, name="ids")
    assert_exactly_once(pg_url, ids, timeout_s=60)
    a.pause()
    try:
        # The standby's host, the same shared journal; rs-b is not running.
        done = replay(config_copy(b, tmp_path / "rs-b.toml"), 60)
    finally:
        a.resume()
    wait_until(lambda: active(a), 30, "rs-a active again")
    more = send(activemq, tmp_path, queue_prefix, count=100, name="more")
    assert_exactly_once(pg_url, ids | more, timeout_s=60)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, f"replay ran beside the live rs-a (pid {a.pid}): {done.stderr}"


# -- cut off from ZooKeeper: the session expires, the process and its file lock live on ---------


def test_active_cut_off_from_zookeeper_is_kept_apart_by_its_writer_lock(
    shared_pair, activemq, zookeeper, tcp_proxy, pg_url, queue_prefix, tmp_path: Path
) -> None:
    path = tcp_proxy("127.0.0.1", zookeeper.port)
    a, _ = shared_pair(**{"rs-a": {"ha": {"zookeeper": path.host}}})
    a.start()
    wait_until(lambda: active(a), 30, "rs-a active")
    ids = send(activemq, tmp_path, queue_prefix, count=100, name="ids")
    assert_exactly_once(pg_url, ids, timeout_s=60)
    path.blackhole()
    # Replay reaches ZooKeeper directly: it sees the node go when the session expires.
    direct = config_copy(a, tmp_path / "replay-a.toml", ha={"zookeeper": zookeeper.hosts})
    done = replay(direct, 60)
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr)
    assert f"pid {a.pid}" in line, line
    path.heal()
    wait_until(lambda: active(a), 30, "rs-a active again")
    more = send(activemq, tmp_path, queue_prefix, count=100, name="more")
    assert_exactly_once(pg_url, ids | more, timeout_s=60)


# -- ZooKeeper lost during the wait ---------------------------------------------------------------


def test_zookeeper_lost_during_the_wait_is_one_line_not_a_traceback(
    shared_pair, zookeeper, tcp_proxy, tmp_path: Path
) -> None:
    # A live holder with a long session: replay waits the whole 8 s.
    a, _ = shared_pair(**{"rs-a": {"ha": {"session_timeout": 6.0}}})
    a.start()
    wait_until(lambda: active(a), 30, "rs-a active")
    path = tcp_proxy("127.0.0.1", zookeeper.port)
    through = config_copy(a, tmp_path / "replay-a.toml", ha={"zookeeper": path.host})
    running = replay_in_background(through)
    wait_until(lambda: path.connection_count >= 1, 20, "replay connected to zookeeper")
    # ZooKeeper gone: the connection reset and no new one taken.
    path.stop()
    code, err = finish(running, timeout_s=30)
    assert code == 1, err
    line = one_line(err)
    assert "zookeeper" in line, line


# -- a stock ZooKeeper: the negotiated session outlives the wait ----------------------------------


class StockZooKeeper(ZooKeeper):
    """ZooKeeper with its stock tick (2000 ms): sessions of at least 4 s (2 ticks)."""

    name = "zookeeper-stock"

    def _prepare(self) -> None:
        super()._prepare()
        cfg = self.workdir / "zoo.cfg"
        lines = [
            line
            for line in cfg.read_text().splitlines()
            if not line.startswith(("tickTime=", "minSessionTimeout="))
        ]
        cfg.write_text("\n".join(["tickTime=2000", *lines]) + "\n")


def test_replay_right_after_kill_9_on_a_stock_zookeeper(
    shared_pair, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    with StockZooKeeper(tmp_path / "stock-zk") as zk:
        a, _ = shared_pair(**{"rs-a": {"ha": {"zookeeper": zk.hosts, "session_timeout": 0.5}}})
        a.start()
        wait_until(lambda: active(a), 30, "rs-a active")
        ids = send(activemq, tmp_path, queue_prefix, count=100, name="ids")
        assert_exactly_once(pg_url, ids, timeout_s=60)
        a.kill()
        done = replay(a.config_path, 60)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode == 0, done.stderr
        assert "replayed" in done.stderr, done.stderr
        assert_exactly_once(pg_url, ids, timeout_s=10)


# -- --timeout and the wait ---------------------------------------------------------------------


def test_replay_timeout_shorter_than_the_wait_is_kept(shared_pair, tmp_path: Path) -> None:
    a, _ = shared_pair(**{"rs-a": {"ha": {"session_timeout": 10.0}}})
    a.start()
    wait_until(lambda: active(a), 30, "rs-a active")
    started = time.monotonic()
    done = replay(a.config_path, 60, "--timeout", "1")
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    one_line(done.stderr)
    assert "gave up after 1 s: rs-a holds the role" in done.stderr, done.stderr
    # Interpreter start and a ZooKeeper connect, then the second asked for: well short of the
    # 12 s a holder with a 10 s session would be waited for.
    assert elapsed < 8.0, f"replay --timeout 1 took {elapsed:.1f} s: {done.stderr.strip()}"


# -- two replays of one journal -------------------------------------------------------------------


def test_two_replays_at_once_right_after_a_kill_9(
    shared_pair, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    pair = shared_pair()
    a, _ = pair
    a.start()
    wait_until(lambda: active(a), 30, "rs-a active")
    ids = send(activemq, tmp_path, queue_prefix, count=300, name="ids")
    # All of them taken from the broker (journaled) before the kill: replay is what stores the
    # rest.
    wait_until(lambda: not pair.left_in_brokers(), 30, "every report consumed")
    a.kill()
    first = replay_in_background(a.config_path)
    second = replay_in_background(a.config_path)
    results = [finish(first), finish(second)]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 1]), results
    for code, err in results:
        assert "Traceback" not in err, results
        if code == 1:
            line = one_line(err)
            assert "already running" in line, line
    assert_exactly_once(pg_url, ids, timeout_s=30)


# -- an instance restarted during the wait ------------------------------------------------------


def test_instance_restarted_during_the_wait(
    shared_pair, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    a, _ = shared_pair(**{"rs-a": {"ha": {"session_timeout": 6.0}}})
    a.start()
    wait_until(lambda: active(a), 30, "rs-a active")
    ids = send(activemq, tmp_path, queue_prefix, count=100, name="ids")
    a.kill()
    running = replay_in_background(a.config_path)
    try:
        # Its old session (6 s) is still there when it comes back: replay must not take it.
        a.start()
        code, err = finish(running)
    finally:
        if running.poll() is None:
            running.kill()
    assert code == 1, err
    line = one_line(err)
    assert "rs-a holds the role" in line or "already running" in line, line
    wait_until(lambda: active(a), 30, "rs-a active")
    more = send(activemq, tmp_path, queue_prefix, count=100, name="more")
    assert_exactly_once(pg_url, ids | more, timeout_s=60)


# -- group mode ---------------------------------------------------------------------------------


def test_group_member_killed_its_queues_taken_over_replay_refuses(
    group: Callable[..., Instance], activemq, pg_url, queues, queue_prefix, tmp_path: Path
) -> None:
    members, _ = start_group(group, 2, queues)
    ids = send(activemq, tmp_path, queue_prefix, count=200, name="ids")
    assert_exactly_once(pg_url, ids, timeout_s=60)
    dead, alive = members
    dead.kill()
    done = replay(dead.config_path, 60)
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr)
    assert f"{alive.config['name']} holds the role" in line, line
    more = send(activemq, tmp_path, queue_prefix, count=200, name="more")
    assert_exactly_once(pg_url, ids | more, timeout_s=60)
