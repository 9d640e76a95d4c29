"""Secrets: where passwords come from, and that none shows in a repr, an error, a log line,
/status or /metrics."""

import logging
import os
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from reporting.config import ConfigError, load_config, parse_config
from reporting.harness.commands import run_command
from storage.database import Sink
from storage.errors import DatabaseUnavailable, StorageError

BROKER_PW = "br0ker-S3cret-x9"
DB_PW = "db-S3cret-q7"


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_password_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    secret_file(tmp_path / "broker.pw", BROKER_PW, mode)
    (tmp_path / "rs.toml").write_text('[broker]\nuser = "reporting"\npassword_file = "broker.pw"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "rs.toml")
    message = str(caught.value)
    assert caught.value.key == "broker.password_file"
    assert f"mode {mode:03o}" in message and "chmod 600" in message
    assert "\n" not in message and BROKER_PW not in message


def test_password_file_that_is_not_utf8_is_refused_by_its_key(tmp_path: Path) -> None:
    (tmp_path / "broker.pw").write_bytes(b"\xff" + BROKER_PW.encode() + b"\xe9\n")
    os.chmod(tmp_path / "broker.pw", 0o600)
    (tmp_path / "rs.toml").write_text('[broker]\nuser = "reporting"\npassword_file = "broker.pw"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "rs.toml")
    assert caught.value.key == "broker.password_file"
    assert str(caught.value).endswith("broker.pw is not UTF-8")
    assert BROKER_PW not in str(caught.value)


@pytest.mark.parametrize("kind", ["pipe", "device", "too large"])
def test_a_password_file_that_is_no_small_regular_file_is_refused_at_once(
    tmp_path: Path, kind: str
) -> None:
    """A pipe with no writer would block the open (run reads the database's file for each new
    connection, on the drainer's thread); a device or a huge file is no password either."""
    path = tmp_path / "broker.pw"
    if kind == "pipe":
        os.mkfifo(path, 0o600)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        secret_file(path, "x" * 70000)
    (tmp_path / "rs.toml").write_text('[broker]\nuser = "reporting"\npassword_file = "broker.pw"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "rs.toml")
    assert caught.value.key == "broker.password_file"
    assert "not a regular file" in str(caught.value) or "not a password" in str(caught.value)


def test_password_file_relative_to_the_config_file(tmp_path: Path) -> None:
    secret_file(tmp_path / "broker.pw", BROKER_PW, 0o400)
    secret_file(tmp_path / "db.pw", DB_PW)
    (tmp_path / "rs.toml").write_text(
        '[broker]\nuser = "reporting"\npassword_file = "broker.pw"\n'
        '[database]\nurl = "postgresql+psycopg://rs@127.0.0.1:1/db"\npassword_file = "db.pw"\n'
    )
    config = load_config(tmp_path / "rs.toml")
    assert config.broker.password == BROKER_PW
    assert f":{DB_PW}@" in config.database.url


def test_the_database_password_file_is_read_again_for_each_connection(tmp_path: Path) -> None:
    from reporting import logs
    from reporting.config import database_password

    secret_file(tmp_path / "db.pw", DB_PW)
    database = {"url": "postgresql+psycopg://rs@h/db", "password_file": str(tmp_path / "db.pw")}
    config = parse_config({"database": database}, env={})
    read = database_password(config.database)
    assert read is not None and read() == DB_PW
    rotated = "rotated-" + DB_PW[::-1]
    secret_file(tmp_path / "db.pw", rotated)
    assert read() == rotated and logs.redact(f"x {rotated} y") == "x *** y"
    # Refused with the checks of start-up, by its key, as an unavailable database.
    for problem, reason in (
        (lambda: os.chmod(tmp_path / "db.pw", 0o640), "chmod 600"),
        (lambda: (tmp_path / "db.pw").write_bytes(b"\xff" + DB_PW.encode()), "is not UTF-8"),
        (lambda: secret_file(tmp_path / "db.pw", DB_PW + "\0"), "NUL"),
        (lambda: (tmp_path / "db.pw").unlink(), "cannot read"),
    ):
        secret_file(tmp_path / "db.pw", DB_PW)
        problem()
        with pytest.raises(DatabaseUnavailable) as caught:
            read()
        assert str(caught.value).startswith("database.password_file: ")
        assert reason in str(caught.value) and DB_PW not in str(caught.value)


def test_no_password_is_read_again_where_it_is_not_from_a_file() -> None:
    from reporting.config import database_password

    url = "postgresql+psycopg://rs@h/db"
    config = parse_config({"database": {"url": url, "password_env": "PW"}}, env={"PW": DB_PW})
    assert config.database.password_file is None and database_password(config.database) is None
    assert database_password(parse_config({}, env={}).database) is None


def test_password_from_environment() -> None:
    config = parse_config(
        {"broker": {"user": "reporting", "password_env": "RS_PW"}}, env={"RS_PW": BROKER_PW}
    )
    assert config.broker.password == BROKER_PW


@pytest.mark.parametrize("section", ["ha", "broker", "database"])
def test_password_variable_that_is_not_utf8_is_refused_by_its_key(section: str) -> None:
    login = {
        "ha": {"user": "rs-pair"},
        "broker": {"user": "reporting"},
        "database": {"url": "postgresql+psycopg://rs@h/db"},
    }[section]
    data = {section: {**login, "password_env": "RS_PW"}}
    # As os.environ gives bytes that are not UTF-8: surrogate-escaped.
    value = (DB_PW.encode() + b"\xff").decode("utf-8", "surrogateescape")
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env={"RS_PW": value})
    assert caught.value.key == f"{section}.password_env"
    assert str(caught.value).endswith("RS_PW is not UTF-8") and DB_PW not in str(caught.value)


def test_password_written_in_the_file_or_url_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"broker": {"password": BROKER_PW}}, env={})
    assert caught.value.key == "broker.password" and BROKER_PW not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_config({"database": {"url": f"postgresql://rs:{DB_PW}@h:5432/db"}}, env={})
    assert caught.value.key == "database.url" and DB_PW not in str(caught.value)


def configured(tmp_path: Path) -> object:
    return parse_config(
        {
            "broker": {"user": "reporting", "password_env": "BROKER_PW"},
            # A port nothing listens on: every connection attempt fails.
            "database": {"url": "postgresql+psycopg://rs@127.0.0.1:9/db", "password_env": "DB_PW"},
            "journal": {"dir": str(tmp_path / "journal")},
        },
        env={"BROKER_PW": BROKER_PW, "DB_PW": DB_PW},
    )


def test_config_repr_hides_passwords(tmp_path: Path) -> None:
    config = configured(tmp_path)
    text = repr(config) + str(config)
    assert BROKER_PW not in text and DB_PW not in text
    assert "***" in repr(config.database)


def test_database_errors_and_logs_hide_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = configured(tmp_path)
    caplog.set_level(logging.DEBUG)
    sink = Sink(config.database.url, cluster="c", journal="j")
    try:
        assert not sink.probe()
        with pytest.raises(StorageError) as caught:
            sink.upgrade()
        assert DB_PW not in str(caught.value) and DB_PW not in repr(sink)
        assert "***" in str(caught.value)
    finally:
        sink.close()
    assert caplog.records
    assert DB_PW not in caplog.text


def test_status_and_metrics_hide_passwords(tmp_path: Path) -> None:
    from reporting.server import Server

    config = parse_config(
        {
            "broker": {"user": "reporting", "password_env": "BROKER_PW"},
            "database": {"url": f"sqlite:///{tmp_path / 'rs.db'}"},
            "journal": {"dir": str(tmp_path / "journal")},
        },
        env={"BROKER_PW": BROKER_PW},
    )
    server = Server(config)
    try:
        text = repr(server.status()) + generate_latest(server.metrics.registry).decode()
    finally:
        server.sink.close()
    assert BROKER_PW not in text


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://rs@h:5432/db?password={DB_PW}",
        f"postgresql+psycopg://rs@h:5432/db?sslmode=require&PassWord={DB_PW}",
        f"postgresql+psycopg://rs@h/db?sslkey=/k.pem&sslpassword={DB_PW}",
        f"postgresql+psycopg://rs:{DB_PW}@/db?host=a:5432&host=b:5432",
    ],
)
def test_password_anywhere_in_the_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"database": {"url": url}}, env={})
    assert caught.value.key == "database.url"
    assert "password" in str(caught.value) and DB_PW not in str(caught.value)


@pytest.mark.parametrize("given", ["password_env", "password_file"])
def test_a_database_password_with_a_nul_is_refused_by_its_key(tmp_path: Path, given: str) -> None:
    password = "Pw9\0" + DB_PW
    secret_file(tmp_path / "db.pw", password)
    source = "RS_DB_PW" if given == "password_env" else str(tmp_path / "db.pw")
    database = {"url": "postgresql+psycopg://rs@h:6543/db", given: source}
    with pytest.raises(ConfigError) as caught:
        parse_config({"database": database}, env={"RS_DB_PW": password})
    assert caught.value.key == f"database.{given}" and "NUL" in str(caught.value)
    assert DB_PW not in str(caught.value)


@pytest.mark.parametrize(
    "password", [" lead", "trail ", "line\nbreak", "cr\r\nlf", "tab\tin", "q'u\"o\\te", "é€"]
)
def test_a_database_password_libpq_carries_is_taken_as_it_is(password: str) -> None:
    database = {"url": "postgresql+psycopg://rs@h:6543/db", "password_env": "RS_DB_PW"}
    config = parse_config({"database": database}, env={"RS_DB_PW": password})
    from sqlalchemy.engine import make_url

    assert make_url(config.database.url).password == password


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://rs@h:6543/re\0porting",
        "postgresql+psycopg://rs@h:6543/re%00porting",
        "postgresql+psycopg://r\0s@h:6543/reporting",
        "postgresql+psycopg://r%00s@h:6543/reporting",
        "postgresql+psycopg://rs@h\0:6543/reporting",
        "postgresql+psycopg://rs@h:6543/reporting?application_name=a%00b",
        "postgresql+psycopg://rs@h:6543/reporting?sslmode=require&options=-c%20a%3Db%00",
        "postgresql+psycopg://rs@/reporting?host=a:6543&host=b%00:6543",
    ],
)
def test_a_database_url_with_a_nul_is_refused_by_its_key(url: str) -> None:
    for secrets in (True, False):
        with pytest.raises(ConfigError) as caught:
            parse_config({"database": {"url": url}}, env={}, secrets=secrets)
        assert caught.value.key == "database.url" and "NUL" in str(caught.value)


def test_password_without_a_user_in_the_url_is_refused(tmp_path: Path) -> None:
    url = "postgresql+psycopg://h:5432/db"
    with pytest.raises(ConfigError) as caught:
        parse_config({"database": {"url": url, "password_env": "PW"}}, env={"PW": DB_PW})
    assert caught.value.key == "database.password_env" and "user" in str(caught.value)
    secret_file(tmp_path / "db.pw", DB_PW)
    with pytest.raises(ConfigError) as caught:
        parse_config({"database": {"url": url, "password_file": str(tmp_path / "db.pw")}}, env={})
    assert caught.value.key == "database.password_file"


def test_redacted_url_hides_every_secret_parameter() -> None:
    from reporting.config import redact_url

    url = f"postgresql+psycopg://rs:{DB_PW}@h/db?sslmode=require&sslpassword={DB_PW}&password=x"
    shown = redact_url(url)
    assert DB_PW not in shown and "password=x" not in shown
    assert shown == "postgresql+psycopg://rs:***@h/db?sslmode=require&sslpassword=***&password=***"


def test_engine_errors_hide_a_reports_values(tmp_path: Path) -> None:
    from sqlalchemy import text

    from storage.database.engine import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(Exception) as caught, engine.connect() as conn:
            conn.execute(text("INSERT INTO missing VALUES (:v)"), {"v": "value-canary-3"})
    finally:
        engine.dispose()
    assert "value-canary-3" not in str(caught.value)


def test_secrets_are_not_looked_up_when_not_needed(tmp_path: Path) -> None:
    data = {
        "ha": {"user": "rs-pair", "password_env": "UNSET_ZK"},
        "broker": {"user": "reporting", "password_file": str(tmp_path / "missing.pw")},
        "database": {"url": "postgresql+psycopg://rs@h/db", "password_env": "UNSET_DB"},
    }
    with pytest.raises(ConfigError):
        parse_config(data, env={})
    config = parse_config(data, env={}, secrets=False)
    assert config.ha.password is None and config.broker.password is None
    assert config.database.url == "postgresql+psycopg://rs@h/db"
    # What is wrong in the file is still wrong.
    with pytest.raises(ConfigError) as caught:
        parse_config({"ha": {"password_env": "X"}}, env={}, secrets=False)
    assert caught.value.key == "ha.user"


def test_status_command_needs_no_secret(tmp_path: Path) -> None:

    (tmp_path / "rs.toml").write_text(
        '[ha]\nuser = "rs-pair"\npassword_env = "RS_UNSET_ZK_PW"\n'
        '[broker]\nuser = "reporting"\npassword_file = "missing.pw"\n'
        '[http]\nlisten = "127.0.0.1:9"\n'
    )
    done = run_command("status", "--config", str(tmp_path / "rs.toml"))
    # Exit 1: nothing listens there; not 2, a config error about the passwords.
    assert done.returncode == 1, done.stderr
    assert "unreachable" in done.stdout
