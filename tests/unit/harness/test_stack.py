"""Stack's state file: a later process finds the same ports and only the servers it started."""

import json
import os
from pathlib import Path

import pytest

from reporting.errors import HarnessError
from reporting.harness import Stack


def test_ports_are_kept_for_the_next_process(tmp_path: Path) -> None:
    first = Stack(tmp_path)
    first._write_state()
    second = Stack(tmp_path)
    assert second.postgres.port == first.postgres.port
    assert second.activemq.stomp_port == first.activemq.stomp_port
    assert second.zookeeper.port == first.zookeeper.port
    assert second.endpoints()["broker"] == f"127.0.0.1:{first.activemq.stomp_port}"


def test_a_reused_pid_is_not_adopted(tmp_path: Path) -> None:
    Stack(tmp_path)._write_state()
    state = json.loads((tmp_path / "stack.json").read_text())
    # This test process is alive, but it is not the server whose workdir the state names.
    state["services"]["zookeeper"]["pid"] = os.getpid()
    (tmp_path / "stack.json").write_text(json.dumps(state))
    stack = Stack(tmp_path)
    assert stack.zookeeper.pid is None
    assert stack.status()["services"]["zookeeper"]["running"] is False


def test_backend_of_a_directory_cannot_change(tmp_path: Path) -> None:
    Stack(tmp_path)._write_state()
    with pytest.raises(HarnessError, match="local stack"):
        Stack(tmp_path, backend="containers")


def test_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="backend"):
        Stack(tmp_path, backend="vagrant")


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text("{not json")
    with pytest.raises(HarnessError, match="unreadable stack state"):
        Stack(tmp_path)
