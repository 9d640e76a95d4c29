"""Attacks on the security fixes from outside, against real servers: the runtime database role
trying to move the fence by the statements a trigger on UPDATE might miss, passwords made of
the characters that logging, JSON, URLs and STOMP escape, at DEBUG in JSON lines."""

import json
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from psycopg import errors, sql

from reporting.cli import main
from reporting.harness import ActiveMQ, Postgres
from reporting.harness.activemq import PRODUCER, SERVER
from reporting.harness.flow import assert_exactly_once
from reporting.harness.instance import Instance, to_toml
from reporting.harness.waiting import wait_until
from tests.integration.test_database_roles import (
    OWNER_PW,
    SERVER_PW,
    SUPER_PW,
    connect,
    create_reporting_database,
    secret,
)

pytestmark = pytest.mark.integration


def test_the_server_role_cannot_lower_the_fence_by_upsert_merge_or_replication_role(
    secure_postgres: Postgres, tmp_path: Path
) -> None:
    pg = secure_postgres
    create_reporting_database(pg)
    owner_toml = tmp_path / "owner.toml"
    url = f"postgresql+psycopg://rs_owner@{pg.address}:{pg.port}/reporting"
    owner_toml.write_text(
        to_toml({"database": {"url": url, "password_file": secret(tmp_path / "o.pw", OWNER_PW)}})
    )
    assert main(["db", "upgrade", "--config", str(owner_toml)]) == 0
    assert main(["db", "grant", "--config", str(owner_toml), "--role", "rs_server"]) == 0

    with connect(pg, "rs_server", SERVER_PW, "reporting") as conn:
        conn.autocommit = True
        conn.execute("INSERT INTO fence (cluster, epoch) VALUES ('/pair1', 9)")
        # Every statement that reaches the row by the UPDATE path meets the trigger.
        for statement in (
            "INSERT INTO fence (cluster, epoch) VALUES ('/pair1', 1)"
            " ON CONFLICT (cluster) DO UPDATE SET epoch = excluded.epoch",
            "MERGE INTO fence f USING (VALUES ('/pair1', 2)) v(c, e) ON f.cluster = v.c"
            " WHEN MATCHED THEN UPDATE SET epoch = v.e",
            "WITH low AS (SELECT 3 AS e) UPDATE fence SET epoch = low.e FROM low",
            "UPDATE fence SET epoch = -epoch",
        ):
            with pytest.raises(errors.CheckViolation):
                conn.execute(statement)
        # Nor can it switch the trigger off for its session, rewrite the schema's revision,
        # add a trigger of its own or hand its rights on.
        for statement in (
            "SET session_replication_role = replica",
            "UPDATE alembic_version SET version_num = '0001'",
            "INSERT INTO alembic_version VALUES ('9999')",
            "DELETE FROM alembic_version",
            "CREATE TRIGGER t BEFORE INSERT ON reports FOR EACH ROW"
            " EXECUTE FUNCTION fence_only_rises()",
            "ALTER FUNCTION fence_only_rises() RENAME TO gone",
            "CREATE OR REPLACE FUNCTION fence_only_rises() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RETURN NEW; END $$",
            "CREATE SCHEMA intruder",
        ):
            with pytest.raises((errors.InsufficientPrivilege, errors.UndefinedObject)):
                conn.execute(statement)
        assert conn.execute("SELECT epoch FROM fence WHERE cluster = '/pair1'").fetchone() == (9,)
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0003",)


# Each has what repr, JSON, URLs, libpq conninfo, STOMP headers and the XML of the broker's users
# escape or quote: a single and a double quote, a backslash, a colon, an at sign, a percent sign,
# an ampersand, a space and a character beyond ASCII. The broker's has a backslash before a c,
# which ActiveMQ would read as a colon in a CONNECT frame that did not escape it.
TAG = uuid.uuid4().hex[:8]
BROKER_PW = f"b'r\"k\\c{TAG}:@%26 é&x"
PRODUCER_PW = f"prd-{TAG}"
ZK_PW = f"z'k\"\\{TAG}:@%41 ü&y"
DB_PW = f"d'b\"\\{TAG}:@%2F ß&z"
PASSWORDS = {"broker": BROKER_PW, "zookeeper": ZK_PW, "database": DB_PW}


def spellings(password: str) -> set[str]:
    """The password as it is, and as it reads after the escapes a log line may apply to it."""
    return {
        password,
        repr(password)[1:-1],
        json.dumps(password)[1:-1],
        json.dumps(password, ensure_ascii=False)[1:-1],
        urllib.parse.quote(password, safe=""),
        urllib.parse.quote_plus(password),
        password.replace("\\", "\\\\").replace(":", "\\c"),  # a STOMP 1.2 header value
        repr(password.encode())[2:-1],  # inside a bytes repr
        password.encode("unicode_escape").decode(),
    }


def leaks_in(where: str, text: str) -> list[str]:
    return [
        f"{where}: {name} as {spelling!r}"
        for name, password in PASSWORDS.items()
        for spelling in spellings(password)
        if spelling in text
    ]


def test_passwords_with_escaped_characters_stay_out_of_debug_json_logs(
    zookeeper, queues, cluster_path: str, tmp_path: Path, instances, flow_to, monkeypatch
) -> None:
    broker = ActiveMQ(
        tmp_path / "secure-activemq",
        users={"reporting": (BROKER_PW, SERVER), "producer": (PRODUCER_PW, PRODUCER)},
    )
    broker.start()
    pg = Postgres(tmp_path / "scram-postgres", password=SUPER_PW)
    pg.start()
    try:
        with connect(pg, "postgres", SUPER_PW) as conn:
            conn.autocommit = True
            conn.execute(
                sql.SQL("CREATE ROLE rs_server LOGIN PASSWORD {}").format(sql.Literal(DB_PW))
            )
            conn.execute("CREATE DATABASE reporting OWNER rs_server")
        monkeypatch.setenv("RS_BROKER_PASSWORD", BROKER_PW)
        monkeypatch.setenv("RS_ZK_PASSWORD", ZK_PW)
        monkeypatch.setenv("RS_DB_PASSWORD", DB_PW)
        url = f"postgresql+psycopg://rs_server@{pg.address}:{pg.port}/reporting"
        server = Instance(
            tmp_path / "rs-esc",
            {
                "name": "rs-esc",
                "ha": {
                    "mode": "shared",
                    "zookeeper": zookeeper.hosts,
                    "cluster": cluster_path,
                    "user": "rs-pair",
                    "password_env": "RS_ZK_PASSWORD",
                },
                "broker": {
                    "hosts": [broker.host],
                    "queues": queues,
                    "user": "reporting",
                    "password_env": "RS_BROKER_PASSWORD",
                },
                "database": {"url": url, "password_env": "RS_DB_PASSWORD"},
                "journal": {"dir": str(tmp_path / "rs-esc" / "journal")},
            },
        )
        command = server._command()
        server._command = lambda: [*command, "--log-level", "DEBUG", "--log-format", "json"]
        instances.append(server)
        server.start()
        wait_until(lambda: server.status()["role"] == "active", 30, "the instance to be active")
        wait_until(lambda: server.status()["broker"] == "connected", 30, "the subscriptions")
        flow = flow_to([broker.host], count=40, rate=0, user="producer", password=PRODUCER_PW)
        flow.start().join(60)
        owner = f"postgresql+psycopg://postgres:{SUPER_PW}@{pg.address}:{pg.port}/reporting"
        assert_exactly_once(owner, flow.ids())

        leaks = []
        log = server.log_path.read_text()
        assert '"level": "DEBUG"' in log and "kazoo" in log and "stomp" in log
        leaks += leaks_in("run log", log)
        for endpoint in ("/status", "/metrics"):
            with urllib.request.urlopen(f"http://{server.listen}{endpoint}", timeout=5) as reply:
                leaks += leaks_in(endpoint, reply.read().decode())
        checked = subprocess.run(
            [sys.executable, "-m", "reporting.cli", "check-config"]
            + ["--config", str(server.config_path), "--log-level", "DEBUG"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "database: ok" in checked.stdout, checked.stdout + checked.stderr
        leaks += leaks_in("check-config", checked.stdout + checked.stderr)
        assert not leaks, leaks
    finally:
        pg.stop()
        broker.stop()
