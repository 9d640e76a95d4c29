"""`reporting-server check-config` against real servers: a passing config, then one thing wrong
at a time (the broker password, the ZooKeeper password, the database down, the journal open to
others), each named on its own `failed:` line with exit code 1."""

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.security import make_digest_acl

from reporting.harness import ActiveMQ
from reporting.harness.activemq import SERVER
from reporting.harness.instance import to_toml
from reporting.harness.ports import free_port

pytestmark = pytest.mark.integration

BROKER_PW = "chk-Broker-9d2f"
ZK_USER, ZK_PW = "rs-check", "chk-Zk-31ab"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ActiveMQ]:
    broker = ActiveMQ(
        tmp_path_factory.mktemp("check-broker"), users={"reporting": (BROKER_PW, SERVER)}
    )
    broker.start()
    yield broker
    broker.stop()


def _secret(path: Path, value: str) -> str:
    path.write_text(value)
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def config(
    tmp_path: Path, secure_broker: ActiveMQ, zookeeper: Any, pg_url: str, queues: list[str]
) -> dict[str, Any]:
    """A shared-mode instance with broker and ZooKeeper credentials; its cluster node made by
    the pair's user, as a running pair would have made it."""
    cluster = f"/rstest/{uuid.uuid4().hex}"
    client = KazooClient(hosts=zookeeper.hosts, auth_data=[("digest", f"{ZK_USER}:{ZK_PW}")])
    client.start(timeout=10)
    try:
        # The folder above stays open, as the pair leaves it: ensure_path would give it the
        # pair's ACL too, and lock every other test's cluster out of it.
        client.ensure_path("/rstest")
        client.create(cluster, acl=[make_digest_acl(ZK_USER, ZK_PW, all=True)])
    finally:
        client.stop()
        client.close()
    journal = tmp_path / "journal"
    journal.mkdir(mode=0o700)
    return {
        "name": "rs-check",
        "ha": {
            "mode": "shared",
            "zookeeper": zookeeper.hosts,
            "cluster": cluster,
            "user": ZK_USER,
            "password_file": _secret(tmp_path / "zk-pw", ZK_PW),
        },
        "broker": {
            "hosts": [secure_broker.host],
            "queues": queues,
            "user": "reporting",
            "password_file": _secret(tmp_path / "broker-pw", BROKER_PW),
        },
        "database": {"url": pg_url},
        "journal": {"dir": str(journal)},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
    }


def check(tmp_path: Path, config: dict[str, Any], *options: str) -> tuple[int, dict[str, str]]:
    path = tmp_path / "check.toml"
    path.write_text(to_toml(config))
    done = subprocess.run(
        [sys.executable, "-m", "reporting.cli", "check-config", "--config", str(path), *options],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr + done.stdout, done.stderr + done.stdout
    lines = {}
    for line in done.stdout.splitlines():
        what, result = line.split(": ", 1)
        lines[what.split(" ", 1)[0]] = result
    return done.returncode, lines


def test_a_passing_config(tmp_path: Path, config: dict[str, Any]) -> None:
    code, lines = check(tmp_path, config)
    assert list(lines) == ["config", "secrets", "journal", "broker", "zookeeper", "database"]
    assert all(result.startswith("ok") for result in lines.values()), lines
    assert code == 0
    assert lines["secrets"] == "ok (broker, zookeeper password read)"
    assert lines["zookeeper"].endswith(f"as user {ZK_USER!r})")
    assert BROKER_PW not in str(lines) and ZK_PW not in str(lines)


def test_a_wrong_broker_password(tmp_path: Path, config: dict[str, Any]) -> None:
    config["broker"]["password_file"] = _secret(tmp_path / "wrong", "not-the-password")
    code, lines = check(tmp_path, config)
    assert code == 1
    assert (
        lines["broker"].startswith("failed: broker ")
        and "refused user 'reporting'" in lines["broker"]
    ), lines["broker"]
    assert lines["zookeeper"].startswith("ok") and lines["database"].startswith("ok")


def test_a_wrong_zookeeper_password(tmp_path: Path, config: dict[str, Any]) -> None:
    config["ha"]["password_file"] = _secret(tmp_path / "wrong", "not-the-password")
    code, lines = check(tmp_path, config)
    assert code == 1
    cluster = config["ha"]["cluster"]
    assert lines["zookeeper"].startswith("failed: zookeeper "), lines["zookeeper"]
    assert f"{cluster}: no access as user {ZK_USER!r}" in lines["zookeeper"]
    assert lines["broker"].startswith("ok")


def test_the_database_down(tmp_path: Path, config: dict[str, Any]) -> None:
    config["database"]["url"] = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
    code, lines = check(tmp_path, config)
    assert code == 1
    assert lines["database"].startswith("failed: database "), lines["database"]
    assert "unavailable" in lines["database"]
    # --local leaves the servers out: what ExecStartPre runs, so an outage run waits out does
    # not keep the instance from starting.
    code, lines = check(tmp_path, config, "--local")
    assert code == 0 and list(lines) == ["config", "secrets", "journal"], lines


def test_a_journal_directory_open_to_others(tmp_path: Path, config: dict[str, Any]) -> None:
    Path(config["journal"]["dir"]).chmod(0o755)
    code, lines = check(tmp_path, config, "--local")
    assert code == 1
    assert lines["journal"] == "failed: open to group or others (mode 755); chmod 700 it"


def test_a_missing_secret_names_the_key(tmp_path: Path, config: dict[str, Any]) -> None:
    del config["broker"]["password_file"]
    config["broker"]["password_env"] = "RS_CHECK_UNSET_VARIABLE"
    code, lines = check(tmp_path, config)
    assert code == 1
    assert lines == {
        "config": "ok (rs-check, shared mode)",
        "secrets": "failed: broker.password_env: environment variable RS_CHECK_UNSET_VARIABLE"
        " is not set",
    }
