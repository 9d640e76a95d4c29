"""PostgreSQL over TLS: with sslmode=verify-full and the server's CA reports are stored; another
CA is refused with one line; a connection without TLS is refused by the server."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from reporting.harness import Postgres
from reporting.harness.commands import run_command
from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.instance import to_toml
from reporting.harness.tls import TlsBundle
from reporting.harness.waiting import wait_until
from storage.database import Sink
from storage.errors import DatabaseError

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_postgres(tmp_path: Path, ca: TlsBundle) -> Iterator[Postgres]:
    with Postgres(tmp_path / "tls-postgres", tls=ca) as server:
        yield server


def verified_url(server: Postgres, database: str, ca_file: Path) -> str:
    return f"{server.url_for(database)}?sslmode=verify-full&sslrootcert={ca_file}"


def new_database(server: Postgres) -> str:
    name = f"t_{uuid.uuid4().hex}"
    server.create_database(name)
    return name


def test_right_ca_stores_reports_exactly_once(
    standalone, activemq, tls_postgres: Postgres, ca: TlsBundle, queue_prefix: str, tmp_path
) -> None:
    url = verified_url(tls_postgres, new_database(tls_postgres), ca.ca_file)
    server = standalone(database={"url": url})
    server.start()
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    flow = Flow(
        [activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=200, rate=0
    ).start()
    flow.join(120)
    ids = flow.ids()
    assert len(ids) == 200
    assert_exactly_once(url, ids)
    with tls_postgres.connect() as conn:
        encrypted = conn.execute(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)"
            " WHERE backend_type = 'client backend' AND ssl AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert encrypted >= 1, "the server holds no TLS connection to the database"


def test_wrong_ca_is_refused_with_one_line(
    tls_postgres: Postgres, other_ca: TlsBundle, tmp_path: Path
) -> None:
    url = verified_url(tls_postgres, new_database(tls_postgres), other_ca.ca_file)
    sink = Sink(url, cluster="tls", journal="tls")
    try:
        with pytest.raises(DatabaseError, match="certificate verify failed"):
            sink.upgrade()
    finally:
        sink.close()

    path = tmp_path / "wrong-ca.toml"
    path.write_text(to_toml({"name": "rs-db-tls", "database": {"url": url}}))
    done = run_command("db", "upgrade", "--config", str(path))
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("reporting-server: database postgresql+psycopg://"), lines[0]
    assert "certificate verify failed" in lines[0]


def test_plain_connection_is_refused(tls_postgres: Postgres) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(
            host="127.0.0.1", port=tls_postgres.port, user="postgres", sslmode="disable"
        ).close()
    with psycopg.connect(
        host="127.0.0.1", port=tls_postgres.port, user="postgres", sslmode="require"
    ) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row == (True,)
