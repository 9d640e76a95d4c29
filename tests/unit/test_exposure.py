"""A password that would leave the machine unencrypted is named at start-up."""

import pytest

from reporting.config import parse_config
from reporting.exposure import plaintext_passwords

ENV = {"PW": "pw-1"}


def warnings_for(broker: dict, database: dict) -> list[str]:
    return plaintext_passwords(parse_config({"broker": broker, "database": database}, env=ENV))


BROKER = {"user": "reporting", "password_env": "PW"}


@pytest.mark.parametrize(
    ("hosts", "named"),
    [
        (["127.0.0.1:61613", "localhost:61614", "[::1]:61613"], None),
        (["127.0.0.1:61613", "10.0.0.7:61613"], "10.0.0.7:61613"),
        (["mq.example:61613"], "mq.example:61613"),
    ],
)
def test_broker_password_over_plain_stomp(hosts: list[str], named: str | None) -> None:
    lines = warnings_for({**BROKER, "hosts": hosts}, {})
    if named is None:
        assert lines == []
    else:
        assert len(lines) == 1 and named in lines[0] and "plain STOMP" in lines[0]
        assert "127.0.0.1" not in lines[0] and "pw-1" not in lines[0]


def test_broker_without_password_is_not_named() -> None:
    assert warnings_for({"hosts": ["10.0.0.7:61613"]}, {}) == []


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("postgresql+psycopg://rs@127.0.0.1:5432/db", None),
        ("postgresql+psycopg://rs@localhost/db", None),
        ("postgresql+psycopg://rs@db.example:5432/db?sslmode=verify-full", None),
        ("postgresql+psycopg://rs@db.example:5432/db?sslmode=require", None),
        ("postgresql+psycopg://rs@db.example:5432/db", "db.example"),
        ("postgresql+psycopg://rs@db.example:5432/db?sslmode=prefer", "db.example"),
        ("postgresql+psycopg://rs@/db?host=127.0.0.1:5432&host=10.1.1.2:5432", "10.1.1.2:5432"),
        ("postgresql+psycopg://rs@/db?host=/run/postgresql", None),
    ],
)
def test_database_password_without_tls(url: str, named: str | None) -> None:
    lines = warnings_for({}, {"url": url, "password_env": "PW"})
    if named is None:
        assert lines == []
    else:
        assert len(lines) == 1 and named in lines[0] and "without TLS" in lines[0]
        assert "pw-1" not in lines[0]


def test_database_without_password_is_not_named() -> None:
    assert warnings_for({}, {"url": "postgresql+psycopg://rs@db.example/db"}) == []
