"""The unit files under deploy/systemd/: what an operator relies on is in them, and
`systemd-analyze verify` finds nothing wrong with them."""

import sys
from pathlib import Path

from tests.unit.deploy.tools import run_tool

UNITS = Path(__file__).resolve().parents[3] / "deploy" / "systemd"
UNIT = UNITS / "reporting-server@.service"


def _service() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    # Keys repeat in unit files (LoadCredential=, ReadWritePaths=): collected per key.
    for line in UNIT.read_text().split("[Service]", 1)[1].split("[Install]")[0].splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_notify_unit_with_watchdog_restart_and_hardening() -> None:
    service = _service()
    assert service["Type"] == ["notify"]
    assert service["Restart"] == ["on-failure"]
    assert service["WatchdogSec"] and int(service["WatchdogSec"][0]) >= 30
    assert service["User"] == ["reporting"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["PrivateTmp"] == ["yes"]
    assert any("/var/lib/reporting-server/%i" in p for p in service["ReadWritePaths"])
    credentials = {c.split(":", 1)[0] for c in service["LoadCredential"]}
    assert credentials == {"broker-password", "zookeeper-password", "database-password"}
    command = "reporting-server run --config /etc/reporting-server/%i.toml"
    assert service["ExecStart"][0].endswith(command)
    assert service["ExecStartPre"][0].endswith(
        "reporting-server check-config --local --config /etc/reporting-server/%i.toml"
    )


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # The unit as installed, but running this checkout's command (verify checks it exists).
    command = str(Path(sys.executable).parent / "reporting-server")
    text = UNIT.read_text().replace("/opt/reporting-server/.venv/bin/reporting-server", command)
    (tmp_path / UNIT.name).write_text(text)
    done = run_tool(
        "systemd-analyze",
        "verify",
        "--man=no",
        "reporting-server@rs-a.service",
        package="systemd",
        cwd=tmp_path,
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not output, output


def test_the_example_config_is_valid_and_reads_its_secrets_from_credentials() -> None:
    from reporting.config import load_config

    config = load_config(UNITS / "rs-a.toml.example", secrets=False)
    assert config.name == "rs-a" and config.ha.mode == "shared"
    text = (UNITS / "rs-a.toml.example").read_text()
    for credential in ("zookeeper-password", "broker-password", "database-password"):
        assert f"/run/credentials/reporting-server@rs-a.service/{credential}" in text
    assert str(config.journal.dir).startswith("/srv/reporting-journal")
    assert "ReadWritePaths=-/srv/reporting-journal" in UNIT.read_text()
