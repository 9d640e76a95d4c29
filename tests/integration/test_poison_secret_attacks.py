"""Poison reports the database refuses only at insert time, odd encodings, a poison sent a
thousand times, poison journalled while the database is down and drained after a kill -9, and
secrets given in bytes that are not UTF-8.

Every report id is accounted for once: a valid report stored once in `reports`, a poison once in
`rejected_reports`, and the reports after them keep moving. A secret the server cannot read is a
configuration mistake: one line naming its key, exit code 2, no traceback, no secret.
"""

import json
import os
import random
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine, select

from reporting.harness.activemq import PRODUCER, SERVER, ActiveMQ
from reporting.harness.flow import assert_exactly_once
from reporting.harness.instance import Instance, to_toml
from reporting.harness.ports import free_port
from reporting.harness.waiting import wait_until
from reporting.samples import sample_report
from reporting.wire.producer import ReportClient
from storage.database.schema import rejected_reports, reports
from tests.integration.conftest import POSTGRES_SUPER_PW

pytestmark = pytest.mark.integration

KINDS = ("cdr", "or", "sq", "events")


def body(kind: str, rng: random.Random, **fields: Any) -> bytes:
    return json.dumps({**sample_report(kind, rng), **fields}).encode()


def rejected_rows(db_url: str) -> list[Any]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            table = rejected_reports
            return list(conn.execute(select(table.c.report_id, table.c.reason)))
    finally:
        engine.dispose()


def stored_ids(db_url: str) -> list[str]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(select(reports.c.report_id))]
    finally:
        engine.dispose()


def send_ordinary(client: ReportClient, prefix: str, tag: str, count: int) -> set[str]:
    rng = random.Random(tag)
    ids = set()
    for i in range(count):
        kind = KINDS[i % 4]
        report_id = f"{tag}-{i}"
        client.send_raw(
            f"/queue/{prefix}gvp.reporting.{kind}", body(kind, rng), report_id=report_id
        )
        ids.add(report_id)
    return ids


def each_rejected_once(db_url: str, expected: dict[str, str], timeout_s: float = 60) -> None:
    """Every id of `expected` in rejected_reports exactly once, its reason starting as given;
    nothing else rejected."""

    def seen() -> set[str]:
        return {row.report_id for row in rejected_rows(db_url)}

    wait_until(lambda: set(expected) <= seen(), timeout_s, "every poison rejected", every_s=0.5)
    rows = rejected_rows(db_url)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.report_id] = counts.get(row.report_id, 0) + 1
    assert {i: n for i, n in counts.items() if n != 1} == {}
    assert set(counts) == set(expected), sorted(set(counts) ^ set(expected))
    for row in rows:
        assert row.reason.startswith(expected[row.report_id]), (row.report_id, row.reason)


# -- values that pass decode but that only the database refuses -----------------------------------

# Each is valid for the wire's validation; the database refuses its row (a bigint column copies
# `arrivals` and `peak` from any kind; `value` from any kind as a float), so it must end in
# rejected_reports, once, as "database refused".
REFUSED_AT_INSERT = {
    # 2**63 fits an unsigned 64-bit integer (the journal's typed columns) but not a bigint.
    "refused-cdr-arrivals-2p63": ("cdr", {"arrivals": 1 << 63}),
    # Beyond 64 bits: the journal record carries no typed columns, the drain reads the payload.
    "refused-sq-peak-2p70": ("sq", {"peak": 1 << 70}),
    "refused-events-arrivals-neg": ("events", {"arrivals": -(1 << 64)}),
}
# Valid JSON, odd but storable: each is stored once.
ODD_BUT_STORED = {
    "odd-negative-zero": ("sq", b', "value": -0, "z": -0.0'),
    "odd-big-int-in-payload": ("cdr", b', "big": ' + str(10**400).encode()),
    "odd-big-int-value": ("sq", b', "value": ' + str(10**400).encode()),
    "odd-escaped-pair": ("events", b', "smile": "\\ud83d\\ude00"'),
    "odd-tiny-float": ("sq", b', "tiny": 5e-324'),
}


def with_members(kind: str, rng: random.Random, members: bytes) -> bytes:
    report = sample_report(kind, rng)
    if b'"value"' in members:
        report.pop("value", None)
    return json.dumps(report).encode()[:-1] + members + b"}"


def test_values_only_the_database_refuses_are_rejected_once_among_odd_and_good_reports(
    standalone, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    server = standalone()
    server.start()
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    rng = random.Random(31)
    good: set[str] = set()
    expected: dict[str, str] = {}
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20) as client:
        for report_id, (kind, fields) in REFUSED_AT_INSERT.items():
            destination = f"/queue/{queue_prefix}gvp.reporting.{kind}"
            client.send_raw(destination, body(kind, rng, **fields), report_id=report_id)
            expected[report_id] = "database refused"
            good |= send_ordinary(client, queue_prefix, f"after-{report_id}", 12)
        for report_id, (kind, members) in ODD_BUT_STORED.items():
            destination = f"/queue/{queue_prefix}gvp.reporting.{kind}"
            client.send_raw(destination, with_members(kind, rng, members), report_id=report_id)
            good.add(report_id)
        # Encodings that are not UTF-8 JSON: rejected by decode, with the reason.
        cdr = body("cdr", rng)
        encodings = {
            "bom-utf8": (b"\xef\xbb\xbf" + cdr, "body is not JSON"),
            "utf16": (cdr.decode().encode("utf-16"), "body is not UTF-8"),
            "utf16-le-no-bom": (cdr.decode().encode("utf-16-le"), "body is not"),
        }
        for report_id, (raw, reason) in encodings.items():
            client.send_raw(
                f"/queue/{queue_prefix}gvp.reporting.cdr",
                raw,
                report_id=report_id,
                headers={"content-type": "application/json;charset=utf-16"},
            )
            expected[report_id] = reason
        client.flush()
    ledger = {line for line in (tmp_path / "ledger").read_text().splitlines() if line}
    assert_exactly_once(pg_url, good, timeout_s=90)
    each_rejected_once(pg_url, expected)
    # A refused row is in rejected_reports only, never in reports as well.
    assert not set(stored_ids(pg_url)) & set(expected)
    assert ledger >= good
    assert server.is_running() and server.status()["database"] == "up"


def test_one_poison_sent_a_thousand_times_is_rejected_once_and_the_stream_moves(
    standalone, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    server = standalone()
    server.start()
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    rng = random.Random(32)
    # The same bytes under the same id, as a producer retrying a report it thinks was lost; the
    # database refuses it (a number jsonb cannot hold), so every copy is isolated by bisection.
    poison = body("sq", rng)[:-1] + b', "tiny": 1e-20000}'
    destination = f"/queue/{queue_prefix}gvp.reporting.sq"
    good: set[str] = set()
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=200) as client:
        for i in range(1000):
            client.send_raw(destination, poison, report_id="poison-x1000", ledger=False)
            if i % 100 == 0:
                good |= send_ordinary(client, queue_prefix, f"between-{i}", 4)
        good |= send_ordinary(client, queue_prefix, "after-all", 40)
        client.flush()
    assert_exactly_once(pg_url, good, timeout_s=120)
    each_rejected_once(pg_url, {"poison-x1000": "database refused"})
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 60, "the journal to drain")
    assert server.status()["database"] == "up"


def test_many_distinct_poisons_interleaved_with_good_reports_are_each_rejected_once(
    standalone, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    server = standalone()
    server.start()
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    rng = random.Random(35)
    destination = f"/queue/{queue_prefix}gvp.reporting.sq"
    poison = body("sq", rng)[:-1]
    expected: dict[str, str] = {}
    good: set[str] = set()
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=200) as client:
        for i in range(600):
            # Every other report one the database alone refuses, each of its own id and text:
            # each batch holds hundreds of rows to isolate.
            report_id = f"poison-{i}"
            client.send_raw(
                destination,
                poison + f', "n": {i}, "tiny": 1e-20000}}'.encode(),
                report_id=report_id,
            )
            expected[report_id] = "database refused"
            good |= send_ordinary(client, queue_prefix, f"good-{i}", 1)
        client.flush()
    assert_exactly_once(pg_url, good, timeout_s=120)
    each_rejected_once(pg_url, expected, timeout_s=60)
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 60, "the journal to drain")
    assert server.status()["database"] == "up"


@pytest.mark.parametrize("then", ["restart", "replay"])
def test_poison_journalled_while_the_database_is_down_is_rejected_once_after_a_kill(
    standalone, activemq, pg_url, queue_prefix, tmp_path: Path, tcp_proxy, then: str
) -> None:
    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = tcp_proxy(host, int(port))
    proxied = pg_url.replace(f"@{host_port}/", f"@{proxy.host}/")
    server = standalone(database={"url": proxied})
    server.start()
    wait_until(lambda: server.status()["database"] == "up", 30, "database: up")
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    proxy.blackhole()
    proxy.reset()
    rng = random.Random(33)
    poison_db = body("sq", rng)[:-1] + b', "tiny": 1e-20000}'
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20) as client:
        # The poison first, as the first record the drain meets once the database is back.
        client.send_raw(
            f"/queue/{queue_prefix}gvp.reporting.sq", poison_db, report_id="down-poison-db"
        )
        client.send_raw(
            f"/queue/{queue_prefix}gvp.reporting.cdr",
            body("cdr", rng, arrivals=1 << 63),
            report_id="down-poison-bigint",
        )
        client.send_raw(
            f"/queue/{queue_prefix}gvp.reporting.or", b"{not json", report_id="down-not-json"
        )
        good = send_ordinary(client, queue_prefix, "down-good", 40)
        client.flush()
    # Acked by the server only once journalled: the broker's queues empty, the journal holds all.
    wait_until(lambda: server.status()["journal"]["pending"] >= 43, 60, "all journalled")
    server.kill()
    proxy.heal()
    if then == "replay":
        # The stopped instance's journal drained by `replay`: the poison met first there too.
        done = cli(["replay", "--config", str(server.config_path)], timeout_s=120)
        out = (done.stdout + done.stderr).decode("utf-8", "backslashreplace")
        assert done.returncode == 0, out
        assert "Traceback" not in out, out
    server.start()
    assert_exactly_once(pg_url, good, timeout_s=90)
    each_rejected_once(
        pg_url,
        {
            "down-poison-db": "database refused",
            "down-poison-bigint": "database refused",
            "down-not-json": "body is not JSON",
        },
    )
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 60, "the journal to drain")
    assert server.status()["database"] == "up"


def test_poison_in_the_journal_of_a_killed_active_is_rejected_once_by_its_peer(
    shared_pair, activemq, database, pg_url, queue_prefix, tmp_path: Path, tcp_proxy
) -> None:
    # rs-a reaches the database through a proxy that goes dark: what it takes stays in the
    # shared journal, poison first; then rs-a is killed and rs-b drains that journal.
    proxy = tcp_proxy("127.0.0.1", database.port)
    a_url = pg_url.replace(f":{database.port}/", f":{proxy.port}/")
    pair = shared_pair(**{"rs-a": {"database": {"url": a_url}}})
    a, b = pair
    a.start()
    wait_until(lambda: a.try_status() and a.status()["role"] == "active", 30, "rs-a active")
    b.start()
    wait_until(lambda: pair.roles()[b.name] == "standby", 30, "rs-b standby")
    wait_until(lambda: a.status()["broker"] == "connected", 30, "rs-a subscribed")
    proxy.blackhole()
    proxy.reset()
    rng = random.Random(36)
    expected: dict[str, str] = {}
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=50) as client:
        for i in range(20):
            report_id = f"pair-poison-{i}"
            client.send_raw(
                f"/queue/{queue_prefix}gvp.reporting.sq",
                body("sq", rng)[:-1] + f', "n": {i}, "tiny": 1e-20000}}'.encode(),
                report_id=report_id,
            )
            expected[report_id] = "database refused"
        client.send_raw(
            f"/queue/{queue_prefix}gvp.reporting.cdr",
            body("cdr", rng, peak=1 << 63),
            report_id="pair-poison-peak",
        )
        expected["pair-poison-peak"] = "database refused"
        good = send_ordinary(client, queue_prefix, "pair-good", 200)
        client.flush()
    wait_until(lambda: a.status()["journal"]["pending"] >= 221, 60, "rs-a to journal all")
    a.kill()
    wait_until(lambda: pair.roles()[b.name] == "active", 30, "rs-b active")
    assert_exactly_once(pg_url, good, timeout_s=90)
    each_rejected_once(pg_url, expected)
    proxy.heal()
    a.start()
    wait_until(lambda: pair.roles()[a.name] == "standby", 30, "rs-a back as standby")
    wait_until(lambda: b.status()["journal"]["pending"] == 0, 60, "the journal drained")
    assert_exactly_once(pg_url, good)
    each_rejected_once(pg_url, expected)


def test_rejected_reports_metric_keeps_a_bounded_set_of_reasons(
    standalone, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    server = standalone(broker={"max_body_bytes": 4096})
    server.start()
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    rng = random.Random(37)
    expected: dict[str, str] = {}
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=50) as client:
        good = body("cdr", rng, pad="x" * 600)
        for i in range(60):
            # A bad byte at a different place in each, and bodies of different sizes over the
            # limit: sixty poisons of two kinds.
            report_id = f"bad-byte-{i}"
            client.send_raw(
                f"/queue/{queue_prefix}gvp.reporting.cdr",
                good[: 10 + 7 * i] + b"\xff" + good[10 + 7 * i :],
                report_id=report_id,
            )
            expected[report_id] = "body is not UTF-8"
            report_id = f"oversize-{i}"
            client.send_raw(
                f"/queue/{queue_prefix}gvp.reporting.cdr",
                body("cdr", rng, pad="y" * (4200 + i)),
                report_id=report_id,
            )
            expected[report_id] = "body of"
        client.flush()
    each_rejected_once(pg_url, expected)
    with urllib.request.urlopen(f"http://{server.listen}/metrics", timeout=5) as reply:
        metrics = reply.read().decode()
    series = [
        line
        for line in metrics.splitlines()
        if line.startswith("reporting_rejected_reports_total{")
    ]
    assert len(series) <= 10, series[:12]


def test_a_different_report_under_a_stored_id_leaves_the_stored_one_as_it_was(
    standalone, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    server = standalone()
    server.start()
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    rng = random.Random(34)
    destination = f"/queue/{queue_prefix}gvp.reporting.cdr"
    first = body("cdr", rng, version="first")
    with ReportClient([activemq.host], ledger=tmp_path / "ledger") as client:
        client.send_raw(destination, first, report_id="collide")
        client.flush()
    assert_exactly_once(pg_url, {"collide"})
    with ReportClient([activemq.host], ledger=tmp_path / "ledger2") as client:
        client.send_raw(destination, body("cdr", rng, version="second"), report_id="collide")
        good = send_ordinary(client, queue_prefix, "after-collide", 8)
        client.flush()
    assert_exactly_once(pg_url, good | {"collide"})
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            payload = conn.scalar(
                select(reports.c.payload["version"].as_string()).where(
                    reports.c.report_id == "collide"
                )
            )
    finally:
        engine.dispose()
    assert payload == "first"


# -- secrets that are not UTF-8 ---------------------------------------------------------------

SECRET_TEXT = "S3cr-9f1c"


def cli(
    argv: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reporting.cli", *argv],
        capture_output=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
    )


# check-config says which check failed and exits 1; run stops with one line and exit code 2.
EXIT_CODES = {"check-config": 1, "run": 2}


def one_line_naming(result: subprocess.CompletedProcess, command: str, key: str) -> None:
    out = (result.stdout + result.stderr).decode("utf-8", "backslashreplace")
    assert SECRET_TEXT not in out, out
    assert "Traceback" not in out, out
    assert key in out, out
    assert result.returncode == EXIT_CODES[command], (result.returncode, out)


def secret_config(tmp_path: Path, broker: dict[str, Any]) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        to_toml(
            {
                "broker": {"hosts": ["127.0.0.1:9"], "user": "reporting", **broker},
                "database": {"url": f"sqlite:///{tmp_path / 'r.db'}"},
                "journal": {"dir": str(tmp_path / "journal")},
            }
        )
    )
    return path


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_password_file_that_is_not_utf8_names_its_key(tmp_path: Path, command: str) -> None:
    secret = tmp_path / "broker.pw"
    secret.write_bytes(b"\xff" + SECRET_TEXT.encode() + b"\xe9")
    secret.chmod(0o600)
    config = secret_config(tmp_path, {"password_file": str(secret)})
    one_line_naming(cli([command, "--config", str(config)]), command, "broker.password_file")


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_password_variable_that_is_not_utf8_names_its_key(tmp_path: Path, command: str) -> None:
    config = secret_config(tmp_path, {"password_env": "RS_ATTACK_BROKER_PW"})
    # The environment as the kernel hands it over: bytes, here not UTF-8.
    env = {**os.environb, b"RS_ATTACK_BROKER_PW": SECRET_TEXT.encode() + b"\xff"}
    result = subprocess.run(
        [sys.executable, "-m", "reporting.cli", command, "--config", str(config)],
        capture_output=True,
        timeout=60,
        env=env,
    )
    one_line_naming(result, command, "broker.password_env")


def test_a_password_file_open_to_others_is_refused_by_its_key(tmp_path: Path) -> None:
    secret = tmp_path / "broker.pw"
    secret.write_text(SECRET_TEXT)
    secret.chmod(0o644)
    config = secret_config(tmp_path, {"password_file": str(secret)})
    for command in ("check-config", "run"):
        result = cli([command, "--config", str(config)])
        out = (result.stdout + result.stderr).decode()
        assert SECRET_TEXT not in out and "Traceback" not in out, out
        assert "broker.password_file" in out and "chmod 600" in out, out
        assert result.returncode != 0


# -- passwords rotated while the server runs ------------------------------------------------------


def connect(pg: Any, user: str, password: str) -> psycopg.Connection:
    return psycopg.connect(
        host=pg.address, port=pg.port, user=user, password=password, dbname="postgres"
    )


OLD_DB_PW, NEW_DB_PW = "old-Db-Pw:@%'5e1a", 'new-Db-Pw\\"é%41@:7c2b'


def write_secret(path: Path, value: str) -> str:
    path.write_text(value)
    path.chmod(0o600)
    return str(path)


def scram_database(pg: Any) -> None:
    with connect(pg, "postgres", POSTGRES_SUPER_PW) as conn:
        conn.autocommit = True
        conn.execute(
            sql.SQL("CREATE ROLE rs_server LOGIN PASSWORD {}").format(sql.Literal(OLD_DB_PW))
        )
        conn.execute("CREATE DATABASE reporting OWNER rs_server")


def rotate_database_password(pg: Any) -> None:
    """The role's password changed, and its sessions ended, as an operator rotating it would."""
    with connect(pg, "postgres", POSTGRES_SUPER_PW) as conn:
        conn.autocommit = True
        conn.execute(sql.SQL("ALTER ROLE rs_server PASSWORD {}").format(sql.Literal(NEW_DB_PW)))
    end_sessions(pg)


def end_sessions(pg: Any) -> None:
    """The server's sessions ended: its next statement needs a new connection."""
    with connect(pg, "postgres", POSTGRES_SUPER_PW) as conn:
        conn.autocommit = True
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'rs_server'"
        )


def database_server(
    tmp_path: Path, pg: Any, activemq: Any, queues: list[str], instances: list[Instance]
) -> tuple[Instance, Path, str]:
    pw_file = tmp_path / "db.pw"
    url = f"postgresql+psycopg://rs_server@{pg.address}:{pg.port}/reporting"
    server = Instance(
        tmp_path / "rs-rotate",
        {
            "name": "rs-rotate",
            "broker": {"hosts": [activemq.host], "queues": queues},
            "database": {"url": url, "password_file": write_secret(pw_file, OLD_DB_PW)},
            "journal": {"dir": str(tmp_path / "rs-rotate" / "journal")},
        },
    )
    instances.append(server)
    owner = f"postgresql+psycopg://postgres:{POSTGRES_SUPER_PW}@{pg.address}:{pg.port}/reporting"
    return server, pw_file, owner


def started_database_server(
    pg: Any, activemq: Any, queues: list[str], tmp_path: Path, instances: list[Instance]
) -> tuple[Instance, Path, str]:
    """A server logging in to `pg` with the password in its password_file, the database up."""
    scram_database(pg)
    server, pw_file, owner = database_server(tmp_path, pg, activemq, queues, instances)
    server.start()
    wait_until(lambda: server.status()["database"] == "up", 30, "database: up")
    return server, pw_file, owner


def no_database_password_in(server: Instance) -> None:
    shown = server.log_path.read_text()
    for endpoint in ("/status", "/metrics"):
        with urllib.request.urlopen(f"http://{server.listen}{endpoint}", timeout=5) as reply:
            shown += reply.read().decode()
    # Nor in what `ps` shows of the process: its arguments and environment.
    pid = server.server_pid or server.pid
    for name in ("cmdline", "environ"):
        shown += Path(f"/proc/{pid}/{name}").read_bytes().decode("utf-8", "replace")
    for password in (OLD_DB_PW, NEW_DB_PW):
        for form in (password, urllib.parse.quote(password, safe=""), json.dumps(password)[1:-1]):
            assert form not in shown, f"{password!r} shown as {form!r}"


def test_a_rotated_database_password_is_taken_from_the_updated_file_without_a_restart(
    secure_postgres, activemq, queues, queue_prefix, tmp_path: Path, instances
) -> None:
    server, pw_file, owner = started_database_server(
        secure_postgres, activemq, queues, tmp_path, instances
    )
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20) as client:
        before = send_ordinary(client, queue_prefix, "before-rotation", 20)
        client.flush()
    assert_exactly_once(owner, before)
    rotate_database_password(secure_postgres)
    write_secret(pw_file, NEW_DB_PW)
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20) as client:
        after = send_ordinary(client, queue_prefix, "after-rotation", 20)
        client.flush()
    assert_exactly_once(owner, before | after, timeout_s=30)
    assert server.status()["database"] == "up"


def test_a_password_file_made_unusable_while_running_is_said_once_by_its_key_and_waited_out(
    secure_postgres, activemq, queues, queue_prefix, tmp_path: Path, instances
) -> None:
    server, pw_file, owner = started_database_server(
        secure_postgres, activemq, queues, tmp_path, instances
    )
    reasons = {
        "open": "is open to group or others (mode 644); chmod 600 it",
        "not-utf8": "db.pw is not UTF-8",
        "nul": "holds a NUL character",
        "gone": "cannot read",
    }
    sent: set[str] = set()
    for case, reason in reasons.items():
        if case == "open":
            pw_file.chmod(0o644)
        elif case == "not-utf8":
            pw_file.write_bytes(b"\xff" + OLD_DB_PW.encode())
            pw_file.chmod(0o600)
        elif case == "nul":
            write_secret(pw_file, OLD_DB_PW + "\0")
        else:
            pw_file.unlink()
        end_sessions(secure_postgres)
        with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20) as client:
            sent |= send_ordinary(client, queue_prefix, case, 10)
            client.flush()

        def said(reason: str = reason) -> bool:
            status = server.status()
            error = status.get("database_error") or ""
            named = "database.password_file" in error and reason in error
            return status["database"] == "down" and named

        # Down while the file is unusable, and why shown; the reports wait in the journal.
        wait_until(said, 30, f"the database down, {case}")
        wait_until(lambda: server.status()["journal"]["pending"] >= 10, 30, "journalled")
    write_secret(pw_file, OLD_DB_PW)
    assert_exactly_once(owner, sent, timeout_s=60)
    wait_until(lambda: server.status()["database"] == "up", 30, "database: up again")
    log = server.log_path.read_text()
    assert "Traceback" not in log, log
    for reason in reasons.values():
        lines = [line for line in log.splitlines() if "cannot reach it" in line and reason in line]
        # One line for each change, naming the key.
        assert len(lines) == 1 and "database.password_file: " in lines[0], lines
    no_database_password_in(server)


def test_after_a_database_password_rotation_a_restart_stores_everything_once_and_shows_no_password(
    secure_postgres, activemq, queues, queue_prefix, tmp_path: Path, instances
) -> None:
    server, pw_file, owner = started_database_server(
        secure_postgres, activemq, queues, tmp_path, instances
    )
    rotate_database_password(secure_postgres)
    refused = 'password authentication failed for user "rs_server"'
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20) as client:
        during = send_ordinary(client, queue_prefix, "during-rotation", 30)
        client.flush()
    # Taken and journalled while the database refuses the old password, and why it is down said.
    wait_until(lambda: server.status()["journal"]["pending"] >= 30, 60, "all journalled")
    wait_until(
        lambda: refused in (server.status().get("database_error") or ""), 60, "the reason shown"
    )
    no_database_password_in(server)
    write_secret(pw_file, NEW_DB_PW)
    server.stop()
    server.start()
    assert_exactly_once(owner, during, timeout_s=60)
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 60, "the journal to drain")
    no_database_password_in(server)


BROKER_OLD_PW, BROKER_NEW_PW = "old-Brk:\\c@%20'8d3e", 'new-Brk"é\\\\:%41@9f4a'
PRODUCER_PW = "prod-Pw-2b6c"


def test_a_broker_password_rotated_while_running_stops_with_one_line_and_loses_nothing(
    pg_url, queues, queue_prefix, tmp_path: Path, instances
) -> None:
    users = {"reporting": (BROKER_OLD_PW, SERVER), "producer": (PRODUCER_PW, PRODUCER)}
    broker = ActiveMQ(tmp_path / "rotating-activemq", users=users)
    broker.start()
    try:
        pw_file = tmp_path / "broker.pw"
        server = Instance(
            tmp_path / "rs-brk",
            {
                "name": "rs-brk",
                "broker": {
                    "hosts": [broker.host],
                    "queues": queues,
                    "user": "reporting",
                    "password_file": write_secret(pw_file, BROKER_OLD_PW),
                    "heartbeat_ms": 1000,
                },
                "database": {"url": pg_url},
                "journal": {"dir": str(tmp_path / "rs-brk" / "journal")},
            },
        )
        instances.append(server)
        server.start()
        wait_until(lambda: server.status()["broker"] == "connected", 30, "the subscriptions")

        def produce(tag: str) -> set[str]:
            ledger = tmp_path / "ledger"
            with ReportClient(
                [broker.host], ledger=ledger, user="producer", password=PRODUCER_PW
            ) as client:
                ids = send_ordinary(client, queue_prefix, tag, 20)
                client.flush()
            return ids

        before = produce("before-rotation")
        assert_exactly_once(pg_url, before)
        broker.users = {**users, "reporting": (BROKER_NEW_PW, SERVER)}
        broker.restart()
        after = produce("after-rotation")
        # The old password refused at the reconnect: one line naming the broker and user, exit 1.
        wait_until(lambda: not server.is_running(), 60, "the server to stop on the refusal")
        assert server._popen is not None and server._popen.returncode == 1
        log = server.log_path.read_text()
        last = log.strip().splitlines()[-1]
        assert last.startswith(f"reporting-server: broker {broker.host} refused user"), last
        assert "Traceback" not in log
        write_secret(pw_file, BROKER_NEW_PW)
        server.start()
        assert_exactly_once(pg_url, before | after, timeout_s=60)
        shown = server.log_path.read_text()
        with urllib.request.urlopen(f"http://{server.listen}/status", timeout=5) as reply:
            shown += reply.read().decode()
        for password in (BROKER_OLD_PW, BROKER_NEW_PW, PRODUCER_PW):
            assert password not in shown and password.replace("\\", "\\\\") not in shown
    finally:
        broker.stop()


def refused_database(
    tmp_path: Path, command: str, database: dict[str, str], key: str
) -> subprocess.CompletedProcess:
    """`command` run on a config of `database`: refused in one line naming `key`, which says
    nothing of the default port 5432, where libpq would go if its connection string ended."""
    config = tmp_path / "config.toml"
    config.write_text(to_toml({"database": database, "journal": {"dir": str(tmp_path / "j")}}))
    try:
        result = cli([command, "--config", str(config)], timeout_s=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command} still running after 20 s, {key} not refused")
    out = (result.stdout + result.stderr).decode("utf-8", "backslashreplace")
    # Whatever it says is about the configured server, never another port.
    assert "5432" not in out, out
    one_line_naming(result, command, key)
    return result


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_database_password_with_a_nul_is_refused_by_its_key(tmp_path: Path, command: str) -> None:
    secret = tmp_path / "db.pw"
    secret.write_bytes(b"Pw9\x00" + SECRET_TEXT.encode())
    secret.chmod(0o600)
    database = {
        "url": f"postgresql+psycopg://rs@127.0.0.1:{free_port()}/reporting",
        "password_file": str(secret),
    }
    refused_database(tmp_path, command, database, "database.password_file")


@pytest.mark.parametrize("where", ["database", "user", "host", "encoded"])
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_database_url_with_a_nul_is_refused_by_its_key(
    tmp_path: Path, command: str, where: str
) -> None:
    user, host, database = "rs", "127.0.0.1", "reporting"
    if where == "database":
        database = "report\0ing"
    elif where == "user":
        user = "r\0s"
    elif where == "host":
        host = "127.0.0.1\0"
    else:
        database = "report%00ing"
    url = f"postgresql+psycopg://{user}@{host}:{free_port()}/{database}"
    result = refused_database(tmp_path, command, {"url": url}, "database.url")
    assert b"NUL" in result.stdout + result.stderr


def test_a_database_password_with_blanks_and_line_breaks_reaches_postgresql_as_it_is(
    secure_postgres, tmp_path: Path
) -> None:
    password = f" \t{SECRET_TEXT}\nnext line\r\n"
    with connect(secure_postgres, "postgres", POSTGRES_SUPER_PW) as conn:
        conn.autocommit = True
        conn.execute(
            sql.SQL("CREATE ROLE rs_blank LOGIN PASSWORD {}").format(sql.Literal(password))
        )
        conn.execute("CREATE DATABASE reporting OWNER rs_blank")
    pg = secure_postgres
    url = f"postgresql+psycopg://rs_blank@{pg.address}:{pg.port}/reporting"
    config = tmp_path / "config.toml"
    config.write_text(to_toml({"database": {"url": url, "password_env": "RS_ATTACK_DB_PW"}}))
    result = cli(["db", "upgrade", "--config", str(config)], env={"RS_ATTACK_DB_PW": password})
    assert result.returncode == 0, result.stderr.decode()
    # Trimmed, it is another password, which PostgreSQL refuses.
    result = cli(
        ["db", "upgrade", "--config", str(config)], env={"RS_ATTACK_DB_PW": password.strip()}
    )
    assert result.returncode == 1 and b"password authentication failed" in result.stderr
