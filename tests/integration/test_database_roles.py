"""PostgreSQL with scram-sha-256 passwords, and the server running as a least-privileged role:
`db upgrade` and `db grant` run as the owner; the server's role stores reports but can neither
drop, truncate, update nor delete them."""

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors
from sqlalchemy.engine import make_url

from reporting.cli import main
from reporting.client import ReportClient
from reporting.harness import Postgres
from reporting.harness.instance import Instance, to_toml
from reporting.harness.waiting import wait_until
from tests.integration.conftest import Flow, assert_exactly_once

pytestmark = pytest.mark.integration

SUPER_PW, OWNER_PW, SERVER_PW = "su-Pw-0b3f", "own-Pw-9e12", "srv-Pw-c4d7"


@pytest.fixture
def secure_postgres(tmp_path: Path) -> Iterator[Postgres]:
    server = Postgres(tmp_path / "secure-postgres", password=SUPER_PW)
    server.start()
    yield server
    server.stop()


def connect(pg: Postgres, user: str, password: str | None, db: str = "postgres"):
    return psycopg.connect(
        host=pg.address, port=pg.port, user=user, password=password, dbname=db, connect_timeout=5
    )


def test_scram_passwords_are_required(secure_postgres) -> None:
    with pytest.raises(psycopg.OperationalError, match="password"):
        connect(secure_postgres, "postgres", None).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(secure_postgres, "postgres", "wrong").close()
    with connect(secure_postgres, "postgres", SUPER_PW) as conn:
        methods = {row[0] for row in conn.execute("SELECT auth_method FROM pg_hba_file_rules")}
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
        assert "scram-sha-256" in methods and "trust" not in methods
        assert stored.fetchone()[0].startswith("SCRAM-SHA-256$")


def secret(path: Path, password: str) -> str:
    path.write_text(password)
    path.chmod(0o600)
    return str(path)


def test_server_role_stores_reports_but_cannot_drop_or_truncate(
    secure_postgres, activemq, queues, queue_prefix, tmp_path: Path, instances
) -> None:
    pg = secure_postgres
    with connect(pg, "postgres", SUPER_PW) as conn:
        conn.autocommit = True
        conn.execute(f"CREATE ROLE rs_owner LOGIN PASSWORD '{OWNER_PW}'")
        conn.execute(f"CREATE ROLE rs_server LOGIN PASSWORD '{SERVER_PW}'")
        conn.execute("CREATE DATABASE reporting OWNER rs_owner")
    url = f"postgresql+psycopg://{{}}@{pg.address}:{pg.port}/reporting"
    owner_toml = tmp_path / "owner.toml"
    owner_toml.write_text(
        to_toml(
            {
                "database": {
                    "url": url.format("rs_owner"),
                    "password_file": secret(tmp_path / "owner.pw", OWNER_PW),
                }
            }
        )
    )
    assert main(["db", "upgrade", "--config", str(owner_toml)]) == 0
    assert main(["db", "grant", "--config", str(owner_toml), "--role", "rs_server"]) == 0

    server = Instance(
        tmp_path / "rs-least",
        {
            "name": "rs-least",
            "ha": {"mode": "standalone"},
            "broker": {"hosts": [activemq.host], "queues": queues},
            "database": {
                "url": url.format("rs_server"),
                "password_file": secret(tmp_path / "server.pw", SERVER_PW),
            },
            "journal": {"dir": str(tmp_path / "rs-least" / "journal")},
        },
    )
    instances.append(server)
    server.start()
    flow = Flow([activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=300, rate=0)
    flow.start()
    flow.join()
    with ReportClient([activemq.host]) as client:
        client.send_raw(f"/queue/{queue_prefix}gvp.reporting.cdr", b"{not", report_id="bad-1")
        client.flush()
    owner_url = make_url(url.format("rs_owner")).set(password=OWNER_PW)
    owner_url = owner_url.render_as_string(hide_password=False)
    assert_exactly_once(owner_url, flow.ids())

    def rejected() -> int:
        with connect(pg, "rs_owner", OWNER_PW, "reporting") as conn:
            query = "SELECT count(*) FROM rejected_reports WHERE report_id = 'bad-1'"
            return conn.execute(query).fetchone()[0]

    wait_until(rejected, 30, "the rejected report to be stored")
    assert server.status()["database"] == "up"

    with connect(pg, "rs_server", SERVER_PW, "reporting") as conn:
        conn.autocommit = True
        for statement in (
            "DROP TABLE reports",
            "TRUNCATE reports",
            "DELETE FROM reports",
            "UPDATE reports SET kind = 'x'",
            "DELETE FROM rejected_reports",
            "ALTER TABLE reports ADD COLUMN x int",
            "CREATE TABLE intruder (x int)",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM reports").fetchone()[0] == 300
    log = server.log_path.read_text()
    assert SERVER_PW not in log and OWNER_PW not in log
