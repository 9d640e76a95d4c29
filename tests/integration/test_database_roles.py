"""PostgreSQL with scram-sha-256 passwords, and the server running as a least-privileged role:
`db upgrade` and `db grant` run as the owner; the server's role stores reports but can neither
drop, truncate, update nor delete them."""

from pathlib import Path

import psycopg
import pytest
from psycopg import errors
from sqlalchemy.engine import make_url

from reporting.cli import main
from reporting.harness import Postgres
from reporting.harness.commands import run_command
from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.instance import Instance, to_toml
from reporting.harness.waiting import wait_until
from reporting.wire.producer import ReportClient
from tests.integration.conftest import POSTGRES_SUPER_PW

pytestmark = pytest.mark.integration

SUPER_PW = POSTGRES_SUPER_PW
OWNER_PW, SERVER_PW = "own-Pw-9e12", "srv-Pw-c4d7"


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


def create_reporting_database(pg: Postgres, *statements: str) -> None:
    """The roles rs_owner and rs_server, then `statements`, then the database reporting owned by
    rs_owner."""
    with connect(pg, "postgres", SUPER_PW) as conn:
        conn.autocommit = True
        conn.execute(f"CREATE ROLE rs_owner LOGIN PASSWORD '{OWNER_PW}'")
        conn.execute(f"CREATE ROLE rs_server LOGIN PASSWORD '{SERVER_PW}'")
        for statement in statements:
            conn.execute(statement)
        conn.execute("CREATE DATABASE reporting OWNER rs_owner")


def test_server_role_stores_reports_but_cannot_drop_or_truncate(
    secure_postgres, activemq, queues, queue_prefix, tmp_path: Path, instances
) -> None:
    pg = secure_postgres
    create_reporting_database(pg)
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
            "broker": {"hosts": [activemq.host], "queues": queues, "max_body_bytes": 4096},
            "database": {
                "url": url.format("rs_server"),
                "password_file": secret(tmp_path / "server.pw", SERVER_PW),
            },
            # Small segments released at once: the drainer releases them with no DELETE.
            "journal": {
                "dir": str(tmp_path / "rs-least" / "journal"),
                "segment_bytes": 16384,
                "retain": 0,
            },
        },
    )
    instances.append(server)
    server.start()
    flow = Flow([activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=300, rate=0)
    flow.start()
    flow.join()
    owner_url = make_url(url.format("rs_owner")).set(password=OWNER_PW)
    owner_url = owner_url.render_as_string(hide_password=False)
    assert_exactly_once(owner_url, flow.ids())
    # Sent once the 300 are stored, so that it is an append of its own: a segment holds every
    # append begun before it reached segment_bytes, and a server slow to start may take all
    # 300 (over 100 KiB) in one, leaving a single segment, the newest, which is never released.
    with ReportClient([activemq.host]) as client:
        client.send_raw(f"/queue/{queue_prefix}gvp.reporting.cdr", b"{not", report_id="bad-1")
        client.flush()

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
            "DELETE FROM journal_positions",
            "TRUNCATE journal_positions",
            "ALTER TABLE reports ADD COLUMN x int",
            "CREATE TABLE intruder (x int)",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM reports").fetchone()[0] == 300

        def released_with_rows_kept() -> set[str]:
            # Released segments are gone from disk; their rows stay.
            rows = {row[0] for row in conn.execute("SELECT segment FROM journal_positions")}
            on_disk = {p.name for p in (tmp_path / "rs-least" / "journal").glob("*.seg")}
            return rows - on_disk

        wait_until(released_with_rows_kept, 30, "segments released, their rows kept")
    assert server.status()["database"] == "up"
    log = server.log_path.read_text()
    assert SERVER_PW not in log and OWNER_PW not in log


@pytest.fixture
def granted(secure_postgres, tmp_path: Path) -> Path:
    """A database owned by rs_owner, migrated, with PUBLIC allowed to create in its schema as
    PostgreSQL before 15 allows; the owner's TOML file (not yet granted)."""
    pg = secure_postgres
    create_reporting_database(pg, "CREATE ROLE bystander LOGIN PASSWORD 'by-Pw-1'")
    with connect(pg, "postgres", SUPER_PW, "reporting") as conn:
        conn.autocommit = True
        conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    owner_toml = tmp_path / "owner.toml"
    url = f"postgresql+psycopg://rs_owner@{pg.address}:{pg.port}/reporting"
    owner_toml.write_text(
        to_toml(
            {"database": {"url": url, "password_file": secret(tmp_path / "owner.pw", OWNER_PW)}}
        )
    )
    assert main(["db", "upgrade", "--config", str(owner_toml)]) == 0
    return owner_toml


def test_fence_only_rises_for_the_server_role(secure_postgres, granted: Path) -> None:
    assert main(["db", "grant", "--config", str(granted), "--role", "rs_server"]) == 0
    with connect(secure_postgres, "rs_server", SERVER_PW, "reporting") as conn:
        conn.autocommit = True
        conn.execute("INSERT INTO fence (cluster, epoch) VALUES ('/pair1', 5), ('/pair2', 1)")
        for statement in (
            "UPDATE fence SET epoch = 4 WHERE cluster = '/pair1'",
            "UPDATE fence SET epoch = 0",
            "UPDATE fence SET cluster = '/pair3' WHERE cluster = '/pair1'",
        ):
            with pytest.raises(errors.CheckViolation, match="fence /pair"):
                conn.execute(statement)
        for statement in (
            "DELETE FROM fence",
            "TRUNCATE fence",
            "DROP TRIGGER fence_only_rises ON fence",
            "ALTER TABLE fence DISABLE TRIGGER fence_only_rises",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
        # Rising, and staying, is what the server does.
        conn.execute("UPDATE fence SET epoch = 6 WHERE cluster = '/pair1'")
        conn.execute("UPDATE fence SET epoch = epoch WHERE cluster = '/pair2'")
        rows = conn.execute("SELECT cluster, epoch FROM fence ORDER BY cluster").fetchall()
        assert rows == [("/pair1", 6), ("/pair2", 1)]


def test_grant_takes_create_on_the_schema_from_every_role(secure_postgres, granted: Path) -> None:
    pg = secure_postgres
    with connect(pg, "bystander", "by-Pw-1", "reporting") as conn:
        conn.execute("CREATE TABLE before_grant (x int)")  # what the fixture's PUBLIC allows
    assert main(["db", "grant", "--config", str(granted), "--role", "rs_server"]) == 0
    for role, password in (("bystander", "by-Pw-1"), ("rs_server", SERVER_PW)):
        with connect(pg, role, password, "reporting") as conn:
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute("CREATE TABLE intruder (x int)")


def test_grant_says_so_when_it_cannot_take_create_away(
    secure_postgres, granted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As in PostgreSQL before 15: the public schema belongs to the superuser, not the owner role.
    with connect(secure_postgres, "postgres", SUPER_PW, "reporting") as conn:
        conn.autocommit = True
        conn.execute("ALTER SCHEMA public OWNER TO postgres")
    capsys.readouterr()
    assert main(["db", "grant", "--config", str(granted), "--role", "rs_server"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert 'REVOKE CREATE ON SCHEMA "public" FROM PUBLIC' in err and "every role" in err


def test_why_the_database_is_down_is_logged_once_and_shown_in_status(
    secure_postgres, activemq, queues, tmp_path: Path, instances
) -> None:
    pg = secure_postgres
    wrong = "wrong-Pw-77c1"
    with connect(pg, "postgres", SUPER_PW) as conn:
        conn.autocommit = True
        conn.execute(f"CREATE ROLE rs_server LOGIN PASSWORD '{SERVER_PW}'")
        conn.execute("CREATE DATABASE reporting OWNER rs_server")
    server = Instance(
        tmp_path / "rs-wrong",
        {
            "name": "rs-wrong",
            "broker": {"hosts": [activemq.host], "queues": queues},
            "database": {
                "url": f"postgresql+psycopg://rs_server@{pg.address}:{pg.port}/reporting",
                "password_file": secret(tmp_path / "server.pw", wrong),
            },
            "journal": {"dir": str(tmp_path / "rs-wrong" / "journal")},
        },
    )
    instances.append(server)
    server.start()
    refused = 'password authentication failed for user "rs_server"'
    wait_until(lambda: refused in (server.status().get("database_error") or ""), 30, "the reason")
    assert server.status()["database"] == "down"
    # The drainer and the probe keep trying; the reason is logged once all the same.
    wait_until(lambda: pg.log_path.read_text().count(refused) >= 5, 30, "five refused logins")
    lines = [line for line in server.log_path.read_text().splitlines() if refused in line]
    assert len(lines) == 1 and " WARNING " in lines[0], lines
    # It consumes and buffers for ever: nothing reaches the database until an operator fixes
    # the password, so `status` says the instance is not healthy, and why.
    done = run_command("status", "--config", str(server.config_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert refused in done.stdout and wrong not in done.stdout + done.stderr

    # The password the instance has becomes the right one: up, and no reason any more.
    with connect(pg, "postgres", SUPER_PW) as conn:
        conn.autocommit = True
        conn.execute(f"ALTER ROLE rs_server PASSWORD '{wrong}'")
    wait_until(lambda: server.status()["database"] == "up", 30, "the database to be up")
    assert server.status()["database_error"] is None
    assert "reachable" in server.log_path.read_text()
    assert wrong not in server.log_path.read_text()
