"""The log filter: no configured secret, STOMP passcode or report body in any line, whichever
library logs it; and the CLI's --log-level."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import stomp.utils
from stomp.utils import Frame, convert_frame

from reporting import logs
from reporting.cli import build_parser, main
from reporting.errors import ConfigError, ReportingError
from reporting.harness.commands import run_command
from storage.errors import DatabaseError

SECRET = "zk-S3cret/+&=x"
BODY = '{"call_id": "body-canary-71"}'


@contextmanager
def captured_lines(formatter: logging.Formatter) -> Iterator[list[str]]:
    """The lines the root logger writes at DEBUG through a handler with the filter, as
    `logs.setup` makes it."""
    captured: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(self.format(record))

    handler = Keep()
    handler.setFormatter(formatter)
    handler.addFilter(logs.RedactingFilter(formatter))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
def lines() -> Iterator[list[str]]:
    """A logger whose records go through a handler with the filter, as `logs.setup` makes it."""
    logs.remember_secret(SECRET)
    with captured_lines(logging.Formatter(logs.FORMAT)) as captured:
        yield captured


def test_configured_secret_is_masked_plain_and_url_encoded(lines: list[str]) -> None:
    from urllib.parse import quote

    log = logging.getLogger("kazoo.client")
    log.debug("Sending request(xid=None): Auth(auth_type=0, scheme='digest', auth='rs:%s')", SECRET)
    log.info("url postgresql://u:%s@h/db", quote(SECRET, safe=""))
    assert len(lines) == 2
    assert all(SECRET not in line and quote(SECRET, safe="") not in line for line in lines)
    assert "auth='rs:***'" in lines[0]


def test_stomp_connect_frame_and_bodies_are_not_logged(lines: list[str]) -> None:
    log = logging.getLogger("stomp.transport")
    connect = Frame("CONNECT", {"login": "reporting", "passcode": "hunter2"})
    # stomp.py's own mask expects "passcode: x"; the frame says "passcode:x".
    assert "hunter2" in stomp.utils.clean_lines(convert_frame(connect))
    log.debug("sending frame: %s", stomp.utils.clean_lines(convert_frame(connect)))
    send = Frame("SEND", {"destination": "/queue/q"}, BODY)
    log.debug("sending frame: %s", stomp.utils.clean_lines(convert_frame(send)))
    message = Frame("MESSAGE", {"report-id": "r-1"}, BODY.encode())
    log.debug("received frame: %r, headers=%r, body=%r", message.cmd, message.headers, BODY)
    assert len(lines) == 3
    text = "\n".join(lines)
    assert "hunter2" not in text and "body-canary-71" not in text
    assert "sending frame: CONNECT" in lines[0] and "sending frame: SEND" in lines[1]
    assert "'report-id': 'r-1'" in lines[2] and f"<{len(BODY)} bytes>" in lines[2]


def test_passcode_and_password_keywords_are_masked_without_configuration(
    lines: list[str],
) -> None:
    log = logging.getLogger("anything")
    log.warning("frame ['CONNECT\\n', 'passcode:hunter2\\n'] and passcode: hunter3")
    log.warning("conninfo host=h password=hunter4 sslpassword=hunter5 user=u")
    log.warning("dsn postgresql://u:hunter6@h:5432/db")
    text = "\n".join(lines)
    for word in ("hunter2", "hunter3", "hunter4", "hunter5", "hunter6"):
        assert word not in text
    assert "passcode:***" in text and "user=u" in text


def test_tracebacks_are_masked(lines: list[str]) -> None:
    try:
        raise RuntimeError(f"connect failed with {SECRET}")
    except RuntimeError:
        logging.getLogger("reporting.x").exception("failed")
    assert "RuntimeError" in lines[0] and SECRET not in lines[0]


def test_sqlalchemy_rows_are_dropped() -> None:
    def record(msg: str, *args: object) -> logging.LogRecord:
        name = "sqlalchemy.engine.Engine"
        return logging.LogRecord(name, logging.DEBUG, __file__, 1, msg, args, None)

    keep = logs.RedactingFilter()
    assert not keep.filter(record("Row %r", (BODY,)))
    assert keep.filter(record("SELECT 1"))


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "debug", "status", "--config", "f"],
        ["status", "--config", "f", "--log-level", "DEBUG"],
        ["db", "upgrade", "--config", "f", "--log-level", "Debug"],
    ],
)
def test_log_level_before_or_after_the_command(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).log_level == "DEBUG"


def test_default_log_level_is_info() -> None:
    assert build_parser().parse_args(["status", "--config", "f"]).log_level == "INFO"


def test_unknown_log_level_is_an_error(tmp_path: Path) -> None:
    for argv in (["--log-level", "LOUD", "status"], ["status", "--log-level", "LOUD"]):
        done = run_command(*argv, "--config", str(tmp_path / "x.toml"))
        assert done.returncode == 2
        assert "invalid choice: 'LOUD'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("database.url", f"bad: {SECRET}"), 2),
        (ReportingError(f"broker refused passcode:{SECRET}"), 1),
        (DatabaseError(f"database postgresql://u:{SECRET}@h/db: no"), 1),
    ],
)
def test_error_lines_are_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error, code: int
) -> None:
    logs.remember_secret(SECRET)

    def fail(_args: object) -> int:
        raise error

    # register() looks the function up when the parser is built.
    monkeypatch.setattr("reporting.commands.status.status", fail)
    assert main(["status", "--config", "f"]) == code
    err = capsys.readouterr().err
    assert SECRET not in err and "***" in err and err.count("\n") == 1


@pytest.mark.parametrize("secret", ["Zk\"S3cr'et", "back\\slash", "both'\"\\"])
def test_a_secret_logged_inside_a_repr_is_masked_with_its_escapes(
    secret: str, lines: list[str]
) -> None:
    logs.remember_secret(secret)
    log = logging.getLogger("kazoo.client")
    log.debug("Sending request(xid=-4): %r", ("digest", f"rs-pair:{secret}"))
    log.debug("auth=%r", f"rs-pair:{secret}")
    assert len(lines) == 2
    for line in lines:
        assert secret not in line and repr(secret)[1:-1] not in line, line


def test_a_digest_acl_id_is_masked(lines: list[str]) -> None:
    from kazoo.security import make_digest_acl

    acl = make_digest_acl("rs-pair", "another-secret", all=True)
    logging.getLogger("kazoo.client").debug("Sending request: Create(acl=[%r])", acl)
    logging.getLogger("reporting.ha").warning("node /c has digest:%s", acl.id.id)
    assert len(lines) == 2
    for line in lines:
        assert acl.id.id.split(":", 1)[1] not in line, line
        assert "rs-pair:***" in line, line
