"""deploy/monitoring/: every metric the dashboard and the alert rules name is one that /metrics
serves (so they cannot drift apart), and promtool accepts the rules."""

import json
import re
from pathlib import Path

import pytest
import yaml

from reporting.status.metrics import Metrics
from tests.unit.deploy.tools import run_tool

MONITORING = Path(__file__).resolve().parents[3] / "deploy" / "monitoring"
METRIC = re.compile(r"\breporting_[a-z_]+\b")
PROMETHEUS = "prometheus"  # the Debian package with promtool
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def served() -> set[str]:
    """The sample names /metrics serves, labelled families included (they may have no sample
    before their first increment)."""
    names = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def _rules() -> list[dict]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_served_names_are_what_prometheus_client_exposes() -> None:
    names = served()
    assert "reporting_fenced_writes_total" in names
    assert "reporting_drain_batch_seconds_bucket" in names
    assert "reporting_active" in names
    assert "reporting_fenced_writes" not in names  # a counter is served with _total


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_named_is_served(source: str) -> None:
    exprs = _dashboard_exprs() if source == "dashboard" else [r["expr"] for r in _rules()]
    named = {name for expr in exprs for name in METRIC.findall(expr)}
    assert named, "no metric found: the pattern is wrong"
    assert named <= served(), f"not served by /metrics: {sorted(named - served())}"


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    text = " ".join(_dashboard_exprs())
    for name in (
        "reporting_active",
        "reporting_epoch",
        "reporting_received_total",
        "reporting_stored_reports_total",
        "reporting_rejected_reports_total",
        "reporting_duplicate_reports_total",
        "reporting_journal_pending_records",
        "reporting_journal_pending_bytes",
        "reporting_database_up",
        "reporting_broker_connected",
        "reporting_fenced_writes_total",
        "reporting_drain_batch_seconds_bucket",
    ):
        assert name in text, name


def test_the_alerts_the_issue_lists() -> None:
    rules = {rule["alert"]: rule for rule in _rules()}
    assert {
        "ReportingPairNoActive",
        "ReportingPairTwoActive",
        "ReportingJournalGrowing",
        "ReportingDatabaseDown",
        "ReportingFencedWrite",
        "ReportingRejectedReports",
        "ReportingQueueUnowned",
        "ReportingQueueTwoOwners",
    } <= set(rules)
    assert rules["ReportingDatabaseDown"]["for"] == "5m"
    assert rules["ReportingJournalGrowing"]["for"] == "10m"
    assert rules["ReportingPairNoActive"]["for"] == "30s"


def promtool(*args: str, cwd: Path | None = None) -> str:
    """promtool's output; the test fails on a non-zero exit, and is skipped without promtool."""
    done = run_tool("promtool", *args, package=PROMETHEUS, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", str(MONITORING / "alerts.yml"))
    assert "SUCCESS: 9 rules found" in out, out


def test_promtool_test_rules() -> None:
    """The rules' behaviour against made-up series (alerts.test.yml): a healthy pair and group
    page nobody; no active, two active, a queue unowned, the database down, a fenced write do."""
    promtool("test", "rules", "alerts.test.yml", cwd=MONITORING)
