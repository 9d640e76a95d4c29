"""Secrets: where passwords come from, and that none shows in a repr, an error, a log line,
/status or /metrics."""

import logging
import os
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from reporting.config import ConfigError, load_config, parse_config
from storage.database import Sink
from storage.errors import StorageError

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


def test_password_from_environment() -> None:
    config = parse_config(
        {"broker": {"user": "reporting", "password_env": "RS_PW"}}, env={"RS_PW": BROKER_PW}
    )
    assert config.broker.password == BROKER_PW


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
