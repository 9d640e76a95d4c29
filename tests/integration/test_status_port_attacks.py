"""Attacks on the status address at start-up: a port already taken, an address
that cannot be bound, signals and /status while stopping, and what a refused bind leaves behind
for the other instance of a pair.

Every scenario goes through the public interface only: `reporting-server run`, its TOML file, its
HTTP endpoints and signals.
"""

import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from reporting.harness.commands import run_command
from reporting.harness.flow import assert_exactly_once
from reporting.harness.instance import Instance, merge, to_toml
from reporting.harness.ports import free_port
from reporting.harness.waiting import wait_until

pytestmark = pytest.mark.integration

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "reporting-server@.service"


def local_config(tmp_path: Path, listen: str, name: str = "rs-port") -> Path:
    """A standalone instance on SQLite whose broker nobody listens on: start-up reaches the bind
    and /status answers without any server of the session."""
    dead_broker = f"127.0.0.1:{free_port()}"
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'name = "{name}"\n[broker]\nhosts = ["{dead_broker}"]\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "r.db"}"\n'
        f'[journal]\ndir = "{tmp_path / name / "journal"}"\n[http]\nlisten = "{listen}"\n'
    )
    return config


def local_instance(tmp_path: Path, instances: list[Instance], listen: str) -> Instance:
    dead_broker = f"127.0.0.1:{free_port()}"
    instance = Instance(
        tmp_path / "solo",
        {
            "name": "rs-solo",
            "broker": {"hosts": [dead_broker]},
            "database": {"url": f"sqlite:///{tmp_path / 'solo.db'}"},
            "journal": {"dir": str(tmp_path / "solo" / "journal")},
            "http": {"listen": listen},
        },
    )
    instances.append(instance)
    return instance


def one_line(result: Any, listen: str, reason: str) -> None:
    """One line naming the key: a configuration error (exit 2), or a port another process holds
    (exit 1, which a supervisor restarts: it may be free by then)."""
    taken = reason == "Address already in use"
    assert result.returncode == (1 if taken else 2), result.stderr
    lines = result.stderr.strip().splitlines()
    what = "" if taken else "config error: "
    assert lines == [f"reporting-server: {what}http.listen: cannot listen on {listen}: {reason}"], (
        result.stderr
    )


def prevented_restart_codes() -> set[int]:
    text = UNIT.read_text()
    assert re.search(r"^Restart=on-failure$", text, re.M)
    found = re.search(r"^RestartPreventExitStatus=(.*)$", text, re.M)
    return {int(code) for code in found.group(1).split()} if found else set()


# -- addresses that cannot be bound: one line naming the key, exit 2 ---------------------------


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("192.0.2.1:18080", "Cannot assign requested address"),  # an address not of this host
        # The parser takes [v6]:port; the server listens on IPv4 only, and says so.
        ("[::1]:18080", "Address family for hostname not supported"),
    ],
)
def test_an_unbindable_address_is_one_line_naming_the_key(
    tmp_path: Path, listen: str, reason: str
) -> None:
    one_line(run_command("run", "--config", str(local_config(tmp_path, listen))), listen, reason)


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", ":8080"])
def test_a_listen_without_a_usable_port_is_refused_by_the_parser(
    tmp_path: Path, listen: str
) -> None:
    result = run_command("run", "--config", str(local_config(tmp_path, listen)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"reporting-server: config error: http.listen: expected host:port, got {listen!r}"
    ]


def test_a_port_taken_by_a_dual_stack_ipv6_listener_is_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6) as taken:
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        taken.bind(("::", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run_command("run", "--config", str(local_config(tmp_path, listen)))
    one_line(result, listen, "Address already in use")


def test_a_port_taken_by_a_wildcard_listener_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run_command("run", "--config", str(local_config(tmp_path, listen)))
    one_line(result, listen, "Address already in use")


def test_a_port_held_by_a_connected_socket_is_one_line(tmp_path: Path) -> None:
    """A port in use by a connection (no listener: a client's local port) refuses the bind too."""
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.bind(("127.0.0.1", 0))
        client.connect(server.getsockname())
        accepted, _ = server.accept()
        with accepted:
            listen = f"127.0.0.1:{client.getsockname()[1]}"
            result = run_command("run", "--config", str(local_config(tmp_path, listen)))
    one_line(result, listen, "Address already in use")


@pytest.mark.parametrize("holder", ["udp", "ipv6-only"])
def test_a_port_taken_only_on_udp_or_ipv6_does_not_stop_start_up(
    tmp_path: Path, instances: list[Instance], holder: str
) -> None:
    if holder == "udp":
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        taken.bind(("127.0.0.1", 0))
    else:
        taken = socket.socket(socket.AF_INET6)
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        taken.bind(("::1", 0))
        taken.listen()
    with taken:
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        instance = local_instance(tmp_path, instances, listen)
        instance.start(timeout_s=30)
        # Not moved to another port by the harness's retry: it listens where it was told.
        assert instance.listen == listen
        assert instance.status()["name"] == "rs-solo"


# -- supervision ---------------------------------------------------------------------------------


def test_a_port_taken_for_a_moment_is_not_a_permanent_outage_under_the_unit(
    tmp_path: Path, instances: list[Instance]
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    listen = f"127.0.0.1:{taken.getsockname()[1]}"
    config = local_config(tmp_path, listen, name="rs-solo")
    with taken:
        first = run_command("run", "--config", str(config))
    # The holder is gone: the very same start now works, so restarting would fix it.
    instance = local_instance(tmp_path / "again", instances, listen)
    instance.start(timeout_s=30)
    assert instance.listen == listen
    instance.stop()
    assert first.returncode != 0  # a failure, which Restart=on-failure is for ...
    # ... and not one the unit never restarts (a configuration error), which would leave the
    # instance down until someone noticed.
    assert first.returncode not in prevented_restart_codes(), (
        f"exit {first.returncode}: {first.stderr.strip()}"
    )


# -- signals and /status while stopping -----------------------------------------------------------


def test_many_status_requests_while_stopping_end_cleanly(
    tmp_path: Path, instances: list[Instance]
) -> None:
    instance = local_instance(tmp_path, instances, f"127.0.0.1:{free_port()}")
    instance.start(timeout_s=30)
    answered: list[int] = []
    failed: list[str] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://{instance.listen}/status", timeout=5) as r:
                    answered.append(r.status)
            except (urllib.error.URLError, OSError) as exc:
                failed.append(type(exc).__name__)

    askers = [threading.Thread(target=ask) for _ in range(16)]
    for asker in askers:
        asker.start()
    try:
        wait_until(lambda: len(answered) > 100, 20, "/status answering the askers")
        popen = instance._popen
        instance.stop(timeout_s=15)
        assert popen is not None and popen.returncode == 0, instance.log_tail(40)
    finally:
        stop.set()
        for asker in askers:
            asker.join()
    log = instance.log_tail(400)
    assert "Traceback" not in log and "request from" not in log, log
    assert set(answered) == {200}


@pytest.mark.parametrize("after", ["at once", "the status line"])
def test_sigterm_during_start_up_ends_cleanly(
    tmp_path: Path, instances: list[Instance], after: str
) -> None:
    instance = local_instance(tmp_path, instances, f"127.0.0.1:{free_port()}")
    instance._prepare()
    log_path = tmp_path / "sigterm.log"
    with open(log_path, "wb") as log_file:
        popen = subprocess.Popen(
            [sys.executable, "-m", "reporting.cli", "run", "--config", str(instance.config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        if after != "at once":
            wait_until(lambda: "status on http://" in log_path.read_text(), 30, after)
        popen.send_signal(signal.SIGTERM)
        code = popen.wait(15)
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    text = log_path.read_text()
    # Before the handler is set, SIGTERM's default ends it: a clean stop to systemd too.
    assert code in ((0, -signal.SIGTERM) if after == "at once" else (0,)), text
    assert "Traceback" not in text, text
    # The port is free again: a restart binds it.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", int(instance.listen.rsplit(":", 1)[1])))


# -- pairs: the other instance's port ------------------------------------------------------------


def test_a_shared_standby_given_the_actives_port_leaves_the_pair_unharmed(
    shared_pair, db_url: str, send_all
) -> None:
    pair = shared_pair()
    a, b = pair
    a.start()
    wait_until(lambda: (a.try_status() or {}).get("role") == "active", 30, "rs-a active")
    before = a.status()
    wrong = b.workdir / "wrong-port.toml"
    b.workdir.mkdir(parents=True, exist_ok=True)
    wrong.write_text(to_toml(merge(b.config, {"http": {"listen": a.listen}})))
    result = run_command("run", "--config", str(wrong))
    one_line(result, a.listen, "Address already in use")
    # The active did not notice: same role, epoch and holder, and /status is still its own.
    after = a.status()
    assert after["name"] == a.config["name"]
    assert (after["role"], after["epoch"], after["holder"]) == (
        before["role"],
        before["epoch"],
        before["holder"],
    )
    # The refused start left no lock, election node or subscription behind: rs-b starts on its
    # own port as the standby, reports are stored once, and it takes over on SIGTERM of rs-a.
    b.start()
    assert b.listen != a.listen
    wait_until(lambda: (b.try_status() or {}).get("role") == "standby", 30, "rs-b standby")
    ids = send_all(300)
    assert_exactly_once(db_url, ids)
    a.stop()
    wait_until(lambda: (b.try_status() or {}).get("role") == "active", 15, "rs-b active")
    ids |= send_all(100, ledger="ledger2")
    assert_exactly_once(db_url, ids)


def test_a_segregated_backup_given_the_primarys_port_leaves_the_primary_active(
    segregated_pair,
) -> None:
    pair = segregated_pair()
    primary, backup = pair
    primary.start()
    wait_until(lambda: (primary.try_status() or {}).get("role") == "active", 30, "primary")
    wrong = backup.workdir / "wrong-port.toml"
    backup.workdir.mkdir(parents=True, exist_ok=True)
    wrong.write_text(to_toml(merge(backup.config, {"http": {"listen": primary.listen}})))
    one_line(run_command("run", "--config", str(wrong)), primary.listen, "Address already in use")
    assert primary.status()["role"] == "active"
    backup.start()
    wait_until(lambda: (backup.try_status() or {}).get("role") == "standby", 30, "backup")
    assert primary.status()["role"] == "active"
