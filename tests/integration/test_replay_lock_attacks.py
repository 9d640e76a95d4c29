"""Attacks on `replay`'s writer-lock probe (`<journal>/locks/*.lock` of other names) and on the
edges of its ZooKeeper wait: odd lock files, an odd journal path, signals during the wait, a
wrong ZooKeeper password, a slow ZooKeeper, and the database down after the wait.

Only the public interface: the CLI, its TOML, the journal directory on disk, signals, and the
harness's TCP proxy in front of ZooKeeper.
"""

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from reporting.harness.instance import Instance
from reporting.harness.ports import free_port
from reporting.harness.waiting import wait_until
from storage.journal import Journal
from tests.integration.test_replay_attacks import (
    active,
    config_copy,
    finish,
    one_line,
    replay,
    replay_in_background,
)

pytestmark = pytest.mark.integration


def journal_of(instance: Instance) -> Path:
    return Path(instance.config["journal"]["dir"])


# -- lock files on disk ---------------------------------------------------------------------------


def test_leftover_lock_files_of_long_gone_names_do_not_refuse(standalone, tmp_path: Path) -> None:
    solo = standalone()
    locks = journal_of(solo) / "locks"
    locks.mkdir(parents=True, mode=0o700)
    journal_of(solo).chmod(0o700)
    (locks / "rs-gone.lock").write_bytes(f"{os.getpid()}\n17\n".encode().ljust(64))
    (locks / "rs-garbage.lock").write_bytes(b"\xff\xfe not a pid \x00\x00")
    (locks / "rs-empty.lock").write_bytes(b"")
    (locks / "rs-dir.lock").mkdir()
    (locks / "rs-dangling.lock").symlink_to(tmp_path / "nowhere")
    (locks / "rs-to-own.lock").symlink_to(locks / "rs-solo.lock")
    (locks / "rs-to-dev-null.lock").symlink_to("/dev/null")
    done = replay(config_copy(solo, tmp_path / "solo.toml"), 60, "--timeout", "20")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert "replayed 0 records" in done.stderr, done.stderr


def test_a_fifo_among_the_lock_files_does_not_hang_replay(standalone, tmp_path: Path) -> None:
    """A stray named pipe `x.lock` (nothing writes it): replay's probe opens it for reading."""
    solo = standalone()
    locks = journal_of(solo) / "locks"
    locks.mkdir(parents=True, mode=0o700)
    journal_of(solo).chmod(0o700)
    os.mkfifo(locks / "rs-pipe.lock")
    running = replay_in_background(config_copy(solo, tmp_path / "solo.toml"), "--timeout", "5")
    code, err = finish(running, timeout_s=12)
    assert "Traceback" not in err, err
    assert code in (0, 1), err


# -- the journal path itself ----------------------------------------------------------------------


def test_journal_path_that_is_a_file_is_one_line(standalone, tmp_path: Path) -> None:
    solo = standalone()
    journal_of(solo).parent.mkdir(parents=True, exist_ok=True)
    journal_of(solo).write_text("not a journal\n")
    done = replay(config_copy(solo, tmp_path / "solo.toml"), 60, "--timeout", "10")
    print(f"\njournal path is a file: exit {done.returncode}: {done.stderr!r}")
    assert done.returncode == 1, done.stderr
    one_line(done.stderr)


def test_journal_locks_path_that_is_a_file_is_one_line(standalone, tmp_path: Path) -> None:
    solo = standalone()
    journal_of(solo).mkdir(parents=True, mode=0o700)
    (journal_of(solo) / "locks").write_text("x\n")
    done = replay(config_copy(solo, tmp_path / "solo.toml"), 60, "--timeout", "10")
    print(f"\nlocks path is a file: exit {done.returncode}: {done.stderr!r}")
    assert done.returncode == 1, done.stderr
    one_line(done.stderr)


def test_missing_journal_directory(standalone, tmp_path: Path) -> None:
    solo = standalone()
    assert not journal_of(solo).exists()
    done = replay(config_copy(solo, tmp_path / "solo.toml"), 60, "--timeout", "10")
    # Said, not made, and a failure: a mistyped journal.dir does not read as a journal drained.
    assert done.returncode == 1, done.stderr
    assert one_line(done.stderr) == (
        f"replay: no journal at {journal_of(solo)}: nothing to replay"
    ), done.stderr
    assert not journal_of(solo).exists()


def test_journal_directory_with_open_permissions(standalone, tmp_path: Path) -> None:
    solo = standalone()
    journal_of(solo).mkdir(parents=True)
    journal_of(solo).chmod(0o755)
    done = replay(config_copy(solo, tmp_path / "solo.toml"), 60, "--timeout", "10")
    print(f"\n0755 journal: exit {done.returncode}: {done.stderr!r}")
    assert done.returncode == 1, done.stderr
    one_line(done.stderr)


# -- the database down after the wait -------------------------------------------------------------


def test_database_down_after_the_wait_gives_up_with_two_lines_and_no_secret(
    standalone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    solo = standalone()
    monkeypatch.setenv("RS_DB_PASSWORD", "db-Pw-s3cr3t")
    dead = f"postgresql+psycopg://reporting@127.0.0.1:{free_port()}/reports"
    path = config_copy(
        solo, tmp_path / "solo.toml", database={"url": dead, "password_env": "RS_DB_PASSWORD"}
    )
    Journal(journal_of(solo), writer=solo.name).close()  # a journal to replay, empty
    started = time.monotonic()
    done = replay(path, 60, "--timeout", "4")
    took = time.monotonic() - started
    print(f"\ndatabase down: exit {done.returncode} after {took:.1f} s: {done.stderr!r}")
    assert "Traceback" not in done.stderr, done.stderr
    assert "db-Pw-s3cr3t" not in done.stderr + done.stdout, done.stderr
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert any(x.startswith("replay: database down, retrying") for x in lines), done.stderr
    assert lines[-1] == "replay: gave up after 4 s", done.stderr
    assert took < 15


# -- signals during the wait ----------------------------------------------------------------------


def killed_active_and_waiting_replay(shared_pair, zookeeper, tcp_proxy, tmp_path: Path) -> Any:
    """rs-a active then kill -9; a replay as rs-a (its ZooKeeper through a proxy) waiting out
    rs-a's session; returned once the replay's connection is up. The session is long enough
    that a replay slow to start (a loaded machine) still connects well within it."""
    a, _ = shared_pair(**{"rs-a": {"ha": {"session_timeout": 10.0}}})
    a.start()
    wait_until(lambda: active(a), 30, "rs-a active")
    a.kill()
    path = tcp_proxy("127.0.0.1", zookeeper.port)
    config = config_copy(a, tmp_path / "replay-a.toml", ha={"zookeeper": path.host})
    running = replay_in_background(config)
    wait_until(lambda: path.connection_count >= 1, 20, "replay connected to ZooKeeper")
    return running


@pytest.mark.parametrize("sig, expected", [(signal.SIGINT, 130), (signal.SIGTERM, -15)])
def test_signal_to_replay_during_the_wait(
    sig, expected, shared_pair, zookeeper, tcp_proxy, tmp_path: Path
) -> None:
    running = killed_active_and_waiting_replay(shared_pair, zookeeper, tcp_proxy, tmp_path)
    started = time.monotonic()
    running.send_signal(sig)
    code, err = finish(running, timeout_s=12)
    took = time.monotonic() - started
    print(f"\n{sig.name} during the wait: exit {code} after {took:.1f} s: {err!r}")
    assert "Traceback" not in err, err
    assert code == expected, err
    assert took < 3, f"{sig.name} took {took:.1f} s"


# -- ZooKeeper: wrong credentials, slow ---------------------------------------------------------


USER, PASSWORD = "rs-pair", "zk-Pw-51d0"


def test_replay_with_a_wrong_zookeeper_password_says_so_in_one_line(
    shared_pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RS_ZK_PASSWORD", PASSWORD)
    keys = {"ha": {"user": USER, "password_env": "RS_ZK_PASSWORD"}}
    a, _ = shared_pair(**{"rs-a": keys, "rs-b": keys})
    a.start()
    wait_until(lambda: active(a), 30, "rs-a active")
    a.stop()
    monkeypatch.setenv("RS_ZK_WRONG", "not-the-password")
    path = config_copy(a, tmp_path / "wrong.toml", ha={"user": USER, "password_env": "RS_ZK_WRONG"})
    started = time.monotonic()
    done = replay(path, 60, "--timeout", "20")
    took = time.monotonic() - started
    print(f"\nwrong zk password: exit {done.returncode} after {took:.1f} s: {done.stderr!r}")
    assert "not-the-password" not in done.stderr + done.stdout
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr)
    assert "stop it first" not in line, line
    assert "wrong password" in line or "no access" in line, line


def test_a_dark_zookeeper_path_is_one_line_within_the_timeout(
    shared_pair, zookeeper, tcp_proxy, tmp_path: Path
) -> None:
    """ZooKeeper's path blackholed before replay connects: one line within about --timeout, not
    the ten seconds a client's own stop waits on a connection attempt to a dark path."""
    a, _ = shared_pair()
    a.start()
    wait_until(lambda: active(a), 30, "rs-a active")
    a.stop()
    path = tcp_proxy("127.0.0.1", zookeeper.port)
    path.blackhole()
    config = config_copy(a, tmp_path / "dark.toml", ha={"zookeeper": path.host})
    started = time.monotonic()
    done = replay(config, 60, "--timeout", "2")
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert one_line(done.stderr) == (
        f"replay: zookeeper {path.host} cannot be reached to tell who holds the role"
    )
    # Interpreter start, the 2 s asked for and a second to close: well short of ten.
    assert took < 8, f"replay --timeout 2 took {took:.1f} s"


def test_slow_zookeeper_with_nothing_running_does_not_refuse(
    shared_pair, zookeeper, tcp_proxy, tmp_path: Path
) -> None:
    a, _ = shared_pair()
    a.start()
    wait_until(lambda: active(a), 30, "rs-a active")
    a.stop()
    path = tcp_proxy("127.0.0.1", zookeeper.port)
    path.delay(0.1)  # each way: slow, and well within the 2 s session even under load
    config = config_copy(a, tmp_path / "slow.toml", ha={"zookeeper": path.host})
    started = time.monotonic()
    done = replay(config, 60, "--timeout", "30")
    took = time.monotonic() - started
    print(f"\nslow zk: exit {done.returncode} after {took:.1f} s: {done.stderr!r}")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
