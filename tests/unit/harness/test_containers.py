"""The container backend's run options, checked without a Docker engine: host networking, the
workdir mounted at its own path, the local command line, the harness label."""

import os
from pathlib import Path

import pytest

from reporting.errors import HarnessError
from reporting.harness import containers


def test_a_container_runs_the_local_command_on_the_host_network(tmp_path: Path) -> None:
    zookeeper = containers.ZooKeeperContainer(tmp_path / "zk", port=45123)
    options = zookeeper._run_options()
    assert options["network_mode"] == "host"
    assert "ports" not in options, "no port mapping: the server listens on the host's 127.0.0.1"
    workdir = str(zookeeper.workdir)
    assert options["volumes"][workdir] == {"bind": workdir, "mode": "rw"}
    assert options["working_dir"] == workdir
    assert options["user"] == f"{os.getuid()}:{os.getgid()}"
    assert options["labels"] == {containers.LABEL: containers.OWNER}
    command = zookeeper.container_command()
    assert command[0] == "java" and command[-1] == str(zookeeper.workdir / "zoo.cfg")
    assert zookeeper.hosts == "127.0.0.1:45123"
    assert zookeeper.image == containers.ZOOKEEPER_IMAGE
    assert not zookeeper.is_running()


def test_an_instance_container_runs_the_installed_server_with_its_config(tmp_path: Path) -> None:
    instance = containers.InstanceContainer(
        tmp_path / "rs-a", {"name": "rs-a"}, mounts=[tmp_path / "elsewhere"]
    )
    assert instance.container_command() == [
        "reporting-server",
        "run",
        "--config",
        str(instance.config_path),
    ]
    # The folder holding the workdir, where a pair's shared journal lives, and the extra mounts.
    assert instance.mounts() == [tmp_path.resolve(), (tmp_path / "elsewhere").resolve()]
    assert instance.image == containers.SERVER_IMAGE
    assert instance.listen.startswith("127.0.0.1:")


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert containers.select_backend("local") == "local"
    assert containers.select_backend("containers") == "containers"
    with pytest.raises(HarnessError):
        containers.select_backend("podman")
    monkeypatch.setattr(containers, "docker_answers", lambda: False)
    assert containers.select_backend(None) == "local"
    monkeypatch.setattr(containers, "docker_answers", lambda: True)
    assert containers.select_backend(None) == "containers"


def test_no_engine_is_a_harness_error_naming_the_setup_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    with pytest.raises(HarnessError, match="scripts/containers up"):
        containers.docker_client(timeout_s=1)
    assert not containers.docker_answers()
