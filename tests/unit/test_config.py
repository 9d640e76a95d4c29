from datetime import UTC, datetime
from pathlib import Path

import pytest

from reporting.config import (
    Config,
    ConfigError,
    HostPort,
    load_config,
    parse_config,
    record_bytes,
)
from storage.journal.record import FRAME_SIZE, HEADER_SIZE
from storage.reports import Rejected, to_record


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rs.toml"
    path.write_text(text)
    return path


def test_contract_example_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
name = "rs-a"
[ha]
mode = "shared"
role = "primary"
zookeeper = "127.0.0.1:2181"
cluster = "/gvp/reporting/pair1"
session_timeout = 2.0
[broker]
hosts = ["127.0.0.1:61613"]
queues = ["gvp.reporting.cdr", "gvp.reporting.or", "gvp.reporting.sq", "gvp.reporting.events"]
[database]
url = "sqlite:///reporting.db"
[journal]
dir = "journal"
max_bytes = 1073741824
[http]
listen = "127.0.0.1:8080"
""",
    )
    config = load_config(path)
    assert config.name == "rs-a"
    assert config.ha.mode == "shared"
    assert config.ha.session_timeout_s == 2.0
    assert config.broker.hosts == (HostPort("127.0.0.1", 61613),)
    assert config.journal.dir == tmp_path / "journal"
    assert config.database.url == f"sqlite:///{tmp_path.resolve()}/reporting.db"
    assert config.http.port == 8080
    assert config.journal_key == "/gvp/reporting/pair1/shared"
    assert config.fence_cluster == "/gvp/reporting/pair1"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.ha.mode == "standalone"
    assert config.broker.queues == Config().broker.queues
    assert config.fence_cluster == config.name == config.journal_key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("nmae = 'x'", "nmae"),
        ("[ha]\nmode = 'active'", "ha.mode"),
        ("[ha]\nsession_timeout = 'two'", "ha.session_timeout"),
        ("[ha]\nsession_timeout = 0.1", "ha.session_timeout"),
        ("[ha]\ncluster = 'pair1'", "ha.cluster"),
        ("[broker]\nhosts = ['localhost']", "broker.hosts"),
        ("[broker]\nhosts = []", "broker.hosts"),
        ("[broker]\nqueues = ['gvp.reporting.xyz']", "broker.queues"),
        ("[broker]\nqueues = ['../../tmp/evil.cdr']", "broker.queues"),
        ("[broker]\nqueues = ['site/gvp.reporting.cdr']", "broker.queues"),
        ("[broker]\nqueues = ['gvp..reporting.cdr']", "broker.queues"),
        ("[broker]\nqueues = ['.gvp.reporting.cdr']", "broker.queues"),
        ("[broker]\nqueues = ['gvp.reporting.>.cdr']", "broker.queues"),
        ("[broker]\nqueues = ['gvp.*.cdr']", "broker.queues"),
        ("[broker]\nqueues = ['gvp reporting.cdr']", "broker.queues"),
        ("[broker]\nqueues = ['gvp.reporting\\\\x.cdr']", "broker.queues"),
        ("[database]\nurl = 'postgresql://u@h/db?password=x'", "database.url"),
        ("[database]\nurl = 'postgresql://h/db'\npassword_env = 'HOME'", "database.password_env"),
        ("[broker]\nprefetch = true", "broker.prefetch"),
        ("[broker]\npassword = 'secret'", "broker.password"),
        ("[database]\nurl = 'reporting.db'", "database.url"),
        ("[journal]\nmax_bytes = 10", "journal.max_bytes"),
        ("[journal]\nextra = 1", "journal.extra"),
        ("[http]\nlisten = 'nowhere'", "http.listen"),
        ("ha = 3", "ha"),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert err.value.key == key
    assert str(err.value).startswith(key + ":")


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "name = "))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_secrets_from_env_and_file_never_print(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o600)
    data = {
        "broker": {"user": "rs", "password_env": "RS_BROKER_PW"},
        "database": {
            "url": "postgresql+psycopg://rs@db:5432/r",
            "password_file": str(tmp_path / "pw"),
        },
    }
    config = parse_config(data, env={"RS_BROKER_PW": "hunter2"})
    assert config.broker.password == "hunter2"
    assert "s3cret" in config.database.url
    assert "hunter2" not in repr(config)
    assert "s3cret" not in repr(config)
    with pytest.raises(ConfigError) as err:
        parse_config({"broker": {"password_env": "NOPE"}}, env={})
    assert err.value.key == "broker.password_env"


@pytest.mark.parametrize(
    ("broker", "env", "key"),
    [
        ({"user": "rs", "password_env": "PW"}, {"PW": " hunter2"}, "broker.password_env"),
        ({"user": "rs", "password_env": "PW"}, {"PW": "hun\rter2"}, "broker.password_env"),
        ({"user": "rs", "password_env": "PW"}, {"PW": "h" * 20000}, "broker.password_env"),
        ({"user": "rs\n", "password_env": "PW"}, {"PW": "hunter2"}, "broker.user"),
        ({"user": "rs ", "password_env": "PW"}, {"PW": "hunter2"}, "broker.user"),
    ],
)
def test_a_broker_login_activemq_would_read_otherwise_is_refused_by_its_key(
    broker: dict, env: dict, key: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"broker": broker}, env=env)
    assert err.value.key == key
    assert "hunter2" not in str(err.value) and "h" * 100 not in str(err.value)


def test_a_broker_password_of_backslashes_and_colons_is_taken_as_it_is() -> None:
    config = parse_config({"broker": {"user": "r\\s:", "password_env": "PW"}}, env={"PW": "a\\c:b"})
    assert config.broker.user == "r\\s:" and config.broker.password == "a\\c:b"


def test_broker_tls_is_off_by_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.broker.tls is False and config.broker.ca_file is None


def test_broker_ca_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    from reporting.harness.tls import make_ca

    make_ca(tmp_path / "pki")
    config = load_config(write(tmp_path, '[broker]\ntls = true\nca_file = "pki/ca.pem"\n'))
    assert config.broker.tls is True
    assert config.broker.ca_file == tmp_path.resolve() / "pki" / "ca.pem"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls = true\n", "required with broker.tls = true"),
        ('tls = true\nca_file = "missing.pem"\n', "not found"),
        ('tls = true\nca_file = "rs.txt"\n', "holds no PEM CA certificate"),
        ('ca_file = "rs.txt"\n', "only used with broker.tls = true"),
        ('tls = "yes"\n', "expected a bool"),
    ],
)
def test_broker_tls_mistakes_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "rs.txt").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(write(tmp_path, "[broker]\n" + text))
    assert raised.value.key == ("broker.tls" if "bool" in message else "broker.ca_file")


def test_group_mode_has_a_journal_and_a_fence_per_queue(tmp_path: Path) -> None:
    path = tmp_path / "rs.toml"
    path.write_text('name = "rs-1"\n[ha]\nmode = "group"\ncluster = "/g/1"\n[journal]\ndir = "j"\n')
    config = load_config(path)
    lanes = config.lanes
    assert len(lanes) == len(config.broker.queues) == 4
    for lane, queue in zip(lanes, config.broker.queues, strict=True):
        assert lane.dir == tmp_path / "j" / queue
        assert lane.fence == lane.key == f"/g/1/queues/{queue}"
        assert lane.queues == (queue,)


@pytest.mark.parametrize(
    "text, address",
    [
        ("127.0.0.1:61613", HostPort("127.0.0.1", 61613)),
        ("broker-a.example:61614", HostPort("broker-a.example", 61614)),
        ("[::1]:61613", HostPort("::1", 61613)),
    ],
)
def test_an_address_is_parsed_once_and_prints_as_written(text: str, address: HostPort) -> None:
    assert HostPort.parse(text) == address
    assert str(address) == text


@pytest.mark.parametrize("text", ["localhost", ":61613", "h:", "h:0", "h:65536", "h:x", "h:-1"])
def test_what_is_not_an_address_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        HostPort.parse(text)


def test_every_address_of_the_config_is_typed() -> None:
    config = parse_config(
        {
            "broker": {"hosts": ["a:1", "[::1]:2"]},
            "ha": {"peers": ["b:3"]},
            "http": {"listen": "0.0.0.0:4"},
        },
        env={},
    )
    assert config.broker.hosts == (HostPort("a", 1), HostPort("::1", 2))
    assert config.ha.peers == (HostPort("b", 3),)
    assert (config.http.host, config.http.port) == ("0.0.0.0", 4)


def test_default_sizes_hold_a_batch_of_largest_bodies() -> None:
    config = parse_config({})
    record = record_bytes(config.broker.max_body_bytes)
    assert config.journal.max_bytes >= config.broker.batch_records * record
    assert config.journal.segment_bytes >= record


def test_record_bytes_bounds_the_largest_record_of_a_body() -> None:
    # A body of max_body_bytes rejected with the longest id, queue and reason decode makes.
    limit = 4096
    body = b"\xff" * limit
    item = Rejected("é" * 200, "q" * 200, "why " * 150, body, datetime.now(UTC))
    assert len(to_record(item)) + FRAME_SIZE <= record_bytes(limit)


@pytest.mark.parametrize(
    ("journal", "key"),
    [
        # 100 records of 64 KiB bodies (about 87 KiB each as base64) need about 8.5 MiB.
        ({"max_bytes": 8 << 20}, "journal.max_bytes"),
        # One record of a 64 KiB body does not fit a 64 KiB segment.
        ({"segment_bytes": 64 << 10}, "journal.segment_bytes"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_naming_the_keys(journal: dict, key: str) -> None:
    data = {"broker": {"batch_records": 100, "max_body_bytes": 64 << 10}, "journal": journal}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert err.value.key == key
    assert "broker.max_body_bytes" in str(err.value)
    if key == "journal.max_bytes":
        assert "broker.batch_records" in str(err.value)


def test_sizes_that_just_fit_are_accepted() -> None:
    record = record_bytes(64 << 10)
    journal = {"max_bytes": 100 * record, "segment_bytes": HEADER_SIZE + record}
    config = parse_config(
        {"broker": {"batch_records": 100, "max_body_bytes": 64 << 10}, "journal": journal}
    )
    assert config.journal.max_bytes == 100 * record


def test_sizes_that_cannot_fit_stop_start_up_with_exit_2(tmp_path: Path, capsys) -> None:
    from reporting.cli import main

    path = write(tmp_path, "[journal]\nmax_bytes = 1048576\n")
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config error: journal.max_bytes:" in err


@pytest.mark.parametrize("mode", ["shared", "segregated", "group"])
def test_heartbeats_cannot_be_off_where_another_instance_takes_over(mode: str) -> None:
    ha = {"mode": mode, "role": "primary"} if mode == "segregated" else {"mode": mode}
    with pytest.raises(ConfigError) as caught:
        parse_config({"ha": ha, "broker": {"heartbeat_ms": 0}}, env={})
    assert caught.value.key == "broker.heartbeat_ms"
    assert parse_config({"broker": {"heartbeat_ms": 0}}, env={}).broker.heartbeat_ms == 0
