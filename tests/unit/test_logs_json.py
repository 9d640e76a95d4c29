"""--log-format json: one JSON object a line, redacted by the same filter as the text lines."""

import json
import logging
from collections.abc import Iterator

import pytest

from reporting import logs
from reporting.cli import build_parser
from tests.unit.test_logs import captured_lines

SECRET = "json-S3cret-e81"


@pytest.fixture
def lines() -> Iterator[list[str]]:
    """A root handler as `logs.setup(level, "json")` makes it, captured."""
    logs.remember_secret(SECRET)
    with captured_lines(logs.JsonFormatter()) as captured:
        yield captured


def test_a_line_is_one_object_with_the_instance_role_and_fields(lines: list[str]) -> None:
    role = ["standby"]
    logs.describe_instance("rs-a", lambda: role[0])
    log = logging.getLogger("reporting.lane")
    log.info("rs-a: consumer stopped (%s)", "fenced", extra={"queue": "q.cdr", "epoch": 4})
    role[0] = "active"
    log.warning("journal j: quarantined %s", "0001.seg", extra={"segment": "0001.seg"})
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == "reporting.lane"
    assert first["instance"] == "rs-a" and first["role"] == "standby"
    assert first["message"] == "rs-a: consumer stopped (fenced)"
    assert (first["queue"], first["epoch"]) == ("q.cdr", 4)
    assert "segment" not in first
    assert second["role"] == "active" and second["segment"] == "0001.seg"
    assert first["time"].endswith("+00:00") and "T" in first["time"]


def test_secrets_are_masked_in_the_message_and_the_traceback(lines: list[str]) -> None:
    log = logging.getLogger("kazoo.client")
    log.info("Auth(scheme='digest', auth='rs:%s')", SECRET)
    try:
        raise RuntimeError(f"connect failed with passcode:{SECRET}")
    except RuntimeError:
        log.exception("login to postgresql://u:%s@h/db failed", SECRET)
    assert len(lines) == 2
    assert all(SECRET not in line for line in lines)
    error = json.loads(lines[1])
    assert "RuntimeError" in error["exception"] and "***" in error["exception"]
    assert error["message"] == "login to postgresql://u:***@h/db failed"


def test_the_option_before_and_after_the_sub_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["run", "--config", "f"]).log_format == "text"
    assert parser.parse_args(["--log-format", "json", "run", "--config", "f"]).log_format == "json"
    assert parser.parse_args(["run", "--config", "f", "--log-format", "json"]).log_format == "json"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--config", "f", "--log-format", "xml"])
