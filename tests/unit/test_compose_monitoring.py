"""compose/monitoring.yml and the files it mounts: Prometheus reads deploy/monitoring/alerts.yml and
scrapes exactly the instances of the stack it watches (with the `pair` label the rules use), and
promtool accepts its configuration; Grafana's provisioning points at that Prometheus and loads
deploy/monitoring/dashboard.json."""

import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.unit.deploy.test_monitoring import promtool
from tests.unit.test_compose import (
    COMPOSE,
    MONITORING,
    STACKS,
    for_stack,
    server_configs,
    services,
)

DEPLOY = COMPOSE.parent / "deploy" / "monitoring"


def mounts(service: str, stack: str) -> dict[str, Path]:
    """The files a monitoring service sees, by their path in the container, as for `stack`."""
    out = {}
    for volume in services(MONITORING)[service]["volumes"]:
        source, target = for_stack(volume, stack).split(":")[:2]
        if source.startswith("."):
            out[target] = (COMPOSE / source).resolve()
    return out


def prometheus_etc(stack: str, into: Path) -> Path:
    """/etc/prometheus as the container sees it for `stack`, copied under `into`."""
    for target, source in mounts("prometheus", stack).items():
        assert target.startswith("/etc/prometheus/"), target
        copy = into / target.removeprefix("/etc/prometheus/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, copy)
    return into / "prometheus.yml"


def targets(stack: str) -> list[dict]:
    return yaml.safe_load(
        mounts("prometheus", stack)["/etc/prometheus/targets/reporting-server.yml"].read_text()
    )


@pytest.mark.parametrize("stack", [p.stem for p in STACKS])
def test_prometheus_reads_the_alert_rules_and_the_stacks_targets(
    stack: str, tmp_path: Path
) -> None:
    assert mounts("prometheus", stack)["/etc/prometheus/alerts.yml"] == DEPLOY / "alerts.yml"
    config = yaml.safe_load(prometheus_etc(stack, tmp_path).read_text())
    for rule_file in config["rule_files"]:
        assert (tmp_path / rule_file).is_file(), rule_file
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "reporting-server"  # the job the rules' `up{...}` name
    (files,) = [pattern for sd in job["file_sd_configs"] for pattern in sd["files"]]
    assert list(tmp_path.glob(files)) == [tmp_path / "targets" / "reporting-server.yml"]


@pytest.mark.parametrize("path", STACKS, ids=lambda p: p.name)
def test_every_instance_of_the_stack_is_scraped_and_nothing_else(path: Path) -> None:
    listens = {
        name: tomllib.loads(config.read_text())["http"]["listen"].rsplit(":", 1)[1]
        for name, config in server_configs(path).items()
    }
    expected = {f"{name}:{port}" for name, port in listens.items()}
    for name, port in listens.items():  # reached through the port the stack publishes
        assert f"127.0.0.1:{port}:{port}" in services(path)[name]["ports"], name
    groups = targets(path.stem)
    assert {target for group in groups for target in group["targets"]} == expected
    assert [group["labels"]["pair"] for group in groups] == [path.stem]
    extra_hosts = services(MONITORING)["prometheus"]["extra_hosts"]
    assert {f"{name}:127.0.0.1" for name in listens} <= set(extra_hosts)


@pytest.mark.parametrize("stack", [p.stem for p in STACKS])
def test_promtool_check_config(stack: str, tmp_path: Path) -> None:
    out = promtool("check", "config", str(prometheus_etc(stack, tmp_path)))
    assert "SUCCESS: 9 rules found" in out, out


def test_grafana_provisions_the_prometheus_and_the_dashboard() -> None:
    files = mounts("grafana", "shared")
    (datasources,) = [
        s for t, s in files.items() if t.startswith("/etc/grafana/provisioning/datasources/")
    ]
    (providers,) = [
        s for t, s in files.items() if t.startswith("/etc/grafana/provisioning/dashboards/")
    ]
    (datasource,) = yaml.safe_load(datasources.read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    listen = next(
        arg.split("=", 1)[1]
        for arg in services(MONITORING)["prometheus"]["command"]
        if arg.startswith("--web.listen-address=")
    )
    assert datasource["url"] == f"http://{listen}"
    (provider,) = yaml.safe_load(providers.read_text())["providers"]
    dashboards = {
        s for t, s in files.items() if Path(t).parent == Path(provider["options"]["path"])
    }
    assert dashboards == {DEPLOY / "dashboard.json"}
