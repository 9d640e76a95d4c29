"""The standalone pipeline against real ActiveMQ and PostgreSQL: broker -> journal -> database.

Each test sends reports with receipts, keeps a ledger of the receipted ids, injects a fault and
checks at the end that every receipted report is stored exactly once. The round trip and the
database outage run on MariaDB too (`on_databases`).
"""

import json
import socket
import time
from pathlib import Path

import pytest
import sqlalchemy
import stomp
from sqlalchemy import select

from reporting.harness.commands import run_command
from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.waiting import wait_until
from storage.database import Sink
from storage.database.schema import rejected_reports
from tests.conftest import on_databases

pytestmark = pytest.mark.integration


@on_databases(mariadb_marks=pytest.mark.mariadb)
def test_ten_thousand_reports_round_trip_exactly_once(standalone, db_url, send_all) -> None:
    server = standalone()
    server.start()
    ids = send_all(10_000)
    assert len(ids) == 10_000
    assert_exactly_once(db_url, ids)
    status = server.status()
    assert status["role"] == "active" and status["mode"] == "standalone"
    assert status["database"] == "up"
    # A heartbeat missed under load may have the consumer reconnect: connected again, not at once.
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the consumer connected")
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 30, "the journal to drain")


@on_databases(mariadb_marks=pytest.mark.mariadb)
def test_database_killed_for_twenty_seconds(standalone, database, db_url, flowing) -> None:
    server = standalone()
    server.start()
    flow = flowing([server], count=3000, rate=100, stored=0)
    database.kill()
    down_since = time.monotonic()
    seen_down = False
    pending_seen: list[int] = []
    while time.monotonic() - down_since < 20:
        status = server.status()
        if status["database"] == "down":
            seen_down = True
            pending_seen.append(status["journal"]["pending"])
        time.sleep(0.5)  # sampling /status while the outage lasts
    assert seen_down, f"/status never said database: down while {database.name} was dead"
    assert len(pending_seen) >= 2 and pending_seen[-1] > pending_seen[0], (
        f"journal.pending did not grow during the outage: {pending_seen}"
    )
    database.restart()
    assert_exactly_once(db_url, flow.join())
    wait_until(lambda: server.status()["database"] == "up", 30, "database: up")


def test_server_killed_mid_stream_and_restarted(standalone, pg_url, flowing) -> None:
    server = standalone()
    server.start()
    flow = flowing([server], count=4000, rate=400, stored=200)
    server.kill()
    server.start()
    assert_exactly_once(pg_url, flow.join())


def test_broker_killed_mid_stream_and_restarted(standalone, activemq, pg_url, flowing) -> None:
    server = standalone()
    server.start()
    flow = flowing([server], count=3000, stored=200)
    activemq.kill()
    activemq.restart()
    assert_exactly_once(pg_url, flow.join())
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the consumer to reconnect")


MALFORMED = [
    ("gvp.reporting.cdr", {"report-id": "bad-json"}, b"{not json"),
    ("gvp.reporting.cdr", {"report-id": "bad-utf8"}, b'{"call_id": "\xff\xfe"}'),
    ("gvp.reporting.or", {"report-id": "missing-field"}, b'{"component": "mcp1"}'),
    ("gvp.reporting.sq", {"report-id": "not-object"}, b"[1, 2, 3]"),
    ("gvp.reporting.events", {"report-id": "oversized"}, b'{"x": "' + b"a" * 70_000 + b'"}'),
    (
        "gvp.reporting.or",
        {"report-id": "negative"},
        json.dumps(
            {
                "component": "c",
                "interval_start": "2026-01-01T00:00:00",
                "arrivals": -1,
                "peak": 0,
            }
        ).encode(),
    ),
]


def test_malformed_reports_are_rejected_and_the_stream_goes_on(
    standalone, activemq, pg_url, queue_prefix, send_all
) -> None:
    server = standalone(broker={"max_body_bytes": 65536})
    server.start()
    before_ids = send_all(200, "l1")
    host, port = activemq.host.rsplit(":", 1)
    conn = stomp.Connection12([(host, int(port))])
    conn.connect(wait=True)
    for queue, headers, body in MALFORMED:
        conn.send(f"/queue/{queue_prefix}{queue}", body, headers={**headers, "persistent": "true"})
    # A queue of the pair's broker that this pair does not consume is none of its business;
    # a destination it does consume but with an unknown kind cannot be produced, so only the
    # field-level faults above reach the server.
    conn.disconnect()
    after_ids = send_all(200, "l2")
    assert_exactly_once(pg_url, before_ids | after_ids)
    sink = Sink(pg_url, cluster="verify", journal="verify")
    try:
        wait_until(lambda: sink.count_rejected() >= len(MALFORMED), 30, "rejected rows")
        assert sink.count_rejected() == len(MALFORMED)
    finally:
        sink.close()
    engine = sqlalchemy.create_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(select(rejected_reports.c.report_id, rejected_reports.c.reason))
        reasons = dict(rows.all())
    engine.dispose()
    for _, headers, _ in MALFORMED:
        assert headers["report-id"] in reasons, f"{headers['report-id']} not in rejected_reports"
    assert "oversized" in reasons and "max_body_bytes" in reasons["oversized"]
    assert server.is_running()
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the consumer connected")


def test_full_journal_pauses_consumption_and_loses_nothing(
    standalone, activemq, postgres, pg_url, queue_prefix, tmp_path: Path
) -> None:
    # Large enough for one batch of the largest bodies (start-up refuses less), small enough
    # for 1,500 reports to fill it.
    server = standalone(
        journal={"max_bytes": 256 * 1024, "segment_bytes": 16 * 1024},
        broker={"prefetch": 50, "batch_records": 50, "max_body_bytes": 1024},
    )
    server.start()
    wait_until(lambda: server.status()["database"] == "up", 30, "database: up")
    postgres.kill()
    flow = Flow([activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=1500, rate=0)
    flow.start()
    wait_until(lambda: server.status()["journal"]["paused"], 60, "consumption to pause")
    assert server.status()["journal"]["pending_bytes"] <= 256 * 1024
    postgres.restart()
    assert_exactly_once(pg_url, flow.join())
    wait_until(lambda: not server.status()["journal"]["paused"], 30, "consumption to resume")


def test_bad_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[ha]\nmode = "active-active"\n')
    result = run_command("run", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "ha.mode" in lines[0] and "Traceback" not in result.stderr


def test_a_taken_status_port_is_one_line_naming_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        config = tmp_path / "taken.toml"
        config.write_text(f'[http]\nlisten = "{listen}"\n')
        result = run_command("run", "--config", str(config))
    # Exit 1, not 2: the port may be free again at the next start, and a supervisor that stops
    # restarting on a configuration error (the systemd unit) should try again.
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"reporting-server: http.listen: cannot listen on {listen}: Address already in use"
    ], result.stderr


def test_a_status_address_not_of_this_host_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text('[http]\nlisten = "192.0.2.1:18080"\n')  # a documentation address
    result = run_command("run", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "reporting-server: config error: http.listen: cannot listen on 192.0.2.1:18080:"
        " Cannot assign requested address"
    ], result.stderr


def test_replay_drains_a_stopped_instances_journal_with_progress(
    standalone, postgres, pg_url, send_all
) -> None:
    server = standalone()
    server.start()
    wait_until(lambda: server.status()["database"] == "up", 30, "database: up")
    postgres.kill()
    ids = send_all(500)
    wait_until(lambda: server.status()["journal"]["pending"] >= 500, 60, "the backlog journalled")
    server.kill()
    postgres.restart()
    result = run_command(
        "replay", "--config", str(server.config_path), "--timeout", "120", timeout_s=180
    )
    assert result.returncode == 0, result.stderr
    assert "replayed 500 records (500 new reports)" in result.stderr
    assert_exactly_once(pg_url, ids, timeout_s=5)


def test_status_command_and_metrics(standalone, pg_url, send_all) -> None:
    server = standalone()
    server.start()
    ids = send_all(200)
    assert_exactly_once(pg_url, ids)
    result = run_command("status", "--config", str(server.config_path))
    assert result.returncode == 0, result.stdout + result.stderr
    header, row = result.stdout.strip().splitlines()
    assert header.split()[:3] == ["name", "mode", "role"]
    assert row.split()[:3] == ["rs-solo", "standalone", "active"]
    import urllib.request

    with urllib.request.urlopen(f"http://{server.listen}/metrics", timeout=5) as reply:
        metrics = reply.read().decode()
    assert "reporting_stored_reports_total 200.0" in metrics
    assert 'reporting_received_total{kind="cdr"} 50.0' in metrics
    assert "reporting_active 1.0" in metrics
    assert "reporting_broker_connected 1.0" in metrics
    assert "reporting_database_up 1.0" in metrics
