"""Secrets stay secret: a shared pair with a password for each hop (an authenticated broker, a
ZooKeeper digest, scram PostgreSQL) runs a round with reports flowing and a kill -9 of the active;
then no log, no /status or /metrics answer and no text or bytea column of the database holds any
of the passwords. At the default log level and at DEBUG, where stomp.py and kazoo write the
frames and requests that carry the passwords, and the bodies of reports."""

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from reporting.harness import ActiveMQ, Postgres
from reporting.harness.commands import run_command
from reporting.harness.flow import assert_exactly_once
from reporting.harness.instance import Instance
from reporting.harness.pair import active_of, roles
from reporting.harness.waiting import wait_until
from reporting.wire.producer import ReportClient
from tests.integration.conftest import secure_activemq

pytestmark = pytest.mark.integration

BROKER_PW = f"brk-{uuid.uuid4().hex}"
PRODUCER_PW = f"prd-{uuid.uuid4().hex}"
ZK_PW = f"zk-{uuid.uuid4().hex}"
DB_PW = f"db-{uuid.uuid4().hex}"
SUPER_PW = f"su-{uuid.uuid4().hex}"
PASSWORDS = {
    "broker": BROKER_PW,
    "producer": PRODUCER_PW,
    "zookeeper": ZK_PW,
    "database": DB_PW,
    "superuser": SUPER_PW,
}
# Sent in a report: what the scan must find, so that a scan that cannot see is noticed.
CANARY = f"canary-{uuid.uuid4().hex}"
# In the canary's body: stored in the database, never in a log.
BODY_CANARY = f"body-{uuid.uuid4().hex}"


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[ActiveMQ]:
    workdir = tmp_path / "secure-activemq"
    with secure_activemq(workdir, server_pw=BROKER_PW, producer_pw=PRODUCER_PW) as broker:
        yield broker


@pytest.fixture
def scram_postgres(tmp_path: Path) -> Iterator[Postgres]:
    with Postgres(tmp_path / "scram-postgres", password=SUPER_PW) as server:
        with server.connect() as conn:
            conn.autocommit = True
            create_role = sql.SQL("CREATE ROLE rs_server LOGIN PASSWORD {}")
            conn.execute(create_role.format(sql.Literal(DB_PW)))
            conn.execute("CREATE DATABASE reporting OWNER rs_server")
        yield server


def http_get(instance: Instance, path: str) -> str:
    with urllib.request.urlopen(f"http://{instance.listen}{path}", timeout=5) as reply:
        return reply.read().decode()


def found_in(text: str, needles: dict[str, str]) -> list[str]:
    return [name for name, value in needles.items() if value in text]


def database_hits(pg: Postgres, needles: dict[str, str]) -> list[str]:
    """'table.column: name' for every text or bytea column holding one of the needles."""
    hits = []
    with psycopg.connect(
        host=pg.address, port=pg.port, user="postgres", password=SUPER_PW, dbname="reporting"
    ) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'public' AND data_type IN"
            " ('text', 'character varying', 'character', 'bytea', 'json', 'jsonb')"
        ).fetchall()
        assert columns, "no text columns to scan"
        for table, column, data_type in columns:
            if data_type == "bytea":
                # Bytes as stored, and as their hex text, which a body may hold too.
                test = "position(convert_to(%(v)s, 'UTF8') in {c}) > 0"
            else:
                test = "position(%(v)s in {c}::text) > 0"
            query = sql.SQL("SELECT count(*) FROM {t} WHERE " + test).format(
                t=sql.Identifier(table), c=sql.Identifier(column)
            )
            for name, value in needles.items():
                if conn.execute(query, {"v": value}).fetchone()[0]:
                    hits.append(f"{table}.{column}: {name}")
    return hits


@pytest.mark.parametrize("log_level", ["INFO", "DEBUG"])
def test_no_password_in_logs_http_or_database(
    log_level: str,
    shared_pair,
    secure_broker: ActiveMQ,
    scram_postgres: Postgres,
    queue_prefix: str,
    tmp_path: Path,
    flow_to,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The instances inherit the environment they read their passwords from.
    monkeypatch.setenv("RS_BROKER_PASSWORD", BROKER_PW)
    monkeypatch.setenv("RS_ZK_PASSWORD", ZK_PW)
    monkeypatch.setenv("RS_DB_PASSWORD", DB_PW)
    url = f"postgresql+psycopg://rs_server@{scram_postgres.address}:{scram_postgres.port}/reporting"
    keys = {
        "ha": {"user": "rs-pair", "password_env": "RS_ZK_PASSWORD"},
        "broker": {
            "hosts": [secure_broker.host],
            "user": "reporting",
            "password_env": "RS_BROKER_PASSWORD",
        },
        "database": {"url": url, "password_env": "RS_DB_PASSWORD"},
    }
    pair = shared_pair(**{"rs-a": keys, "rs-b": keys})
    for instance in pair:
        # After the sub-command, as an operator may type it.
        command = instance._command()
        instance._command = lambda command=command: [*command, "--log-level", log_level]
        instance.start()
    active = wait_until(lambda: active_of(pair), 30, "an active instance")
    standby = next(i for i in pair if i is not active)
    # The active's subscriptions create the queues: producers have no right to.
    wait_until(lambda: active.status()["broker"] == "connected", 30, "the active to subscribe")

    flow = flow_to(
        [secure_broker.host], count=1500, rate=300, user="producer", password=PRODUCER_PW
    ).start()
    wait_until(lambda: active.status()["stored"] > 200, 30, "reports flowing")
    active.kill()
    wait_until(lambda: active_of(pair) is standby, 30, f"{standby.name} to take over")
    active.start()
    flow.join(120)
    with ReportClient([secure_broker.host], user="producer", password=PRODUCER_PW) as client:
        body = f'{{"call_id": "{BODY_CANARY}"}}'.encode()  # rejected: fields missing
        client.send_raw(f"/queue/{queue_prefix}gvp.reporting.cdr", body, report_id=CANARY)
        client.flush()
    owner = make_url(url).set(password=DB_PW).render_as_string(hide_password=False)
    assert_exactly_once(owner, flow.ids())
    wait_until(
        lambda: database_hits(scram_postgres, {"canary": CANARY}), 30, "the canary to be stored"
    )
    assert roles(pair) == {active.name: "standby", standby.name: "active"}

    wait_until(
        lambda: database_hits(scram_postgres, {"body": BODY_CANARY}), 30, "the body to be stored"
    )
    leaks = []
    for instance in pair:
        for path in instance.workdir.rglob("*"):
            if path.is_file():
                text = path.read_text(errors="replace")
                needles = PASSWORDS
                if path == instance.log_path:
                    needles = {**PASSWORDS, "report body": BODY_CANARY}
                leaks += [f"{path}: {name}" for name in found_in(text, needles)]
        for endpoint in ("/status", "/metrics", "/healthz"):
            answer = http_get(instance, endpoint)
            assert answer, endpoint
            leaks += [f"{instance.name}{endpoint}: {n}" for n in found_in(answer, PASSWORDS)]
    leaks += database_hits(scram_postgres, PASSWORDS)
    journal_dir = Path(pair[0].config["journal"]["dir"])
    for extra in ([], ["--json"]):
        done = run_command("--log-level", log_level, "journal", "inspect", str(journal_dir), *extra)
        assert done.returncode == 0 and "segments" in done.stdout.lower(), done.stderr
        needles = {**PASSWORDS, "report body": BODY_CANARY}
        leaks += [
            f"journal inspect {extra}: {n}" for n in found_in(done.stdout + done.stderr, needles)
        ]
    assert not leaks, leaks
    # The scans see what is there: each log names the broker it consumed from, each /status its
    # instance (and the database scan found the canary above).
    for instance in pair:
        log = instance.log_path.read_text()
        assert found_in(log, {"broker": secure_broker.host})
        assert found_in(http_get(instance, "/status"), {"name": instance.config["name"]})
        if log_level == "DEBUG":
            # The lines that carried the passwords and bodies were written, without them.
            assert "Auth(auth_type=0, scheme='digest', auth='rs-pair:***')" in log
            assert "sending frame: STOMP (headers and body not logged)" in log  # the CONNECT
            assert "received frame: 'MESSAGE'" in log
