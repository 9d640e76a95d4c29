"""--log-format json: one JSON object a line, redacted by the same filter as the text lines; the
lines of a lane, its drainer, intake and consumer name their queue, role changes and fence
refusals their epoch, the journal's lines their segment."""

import json
import logging
import random
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reporting import logs
from reporting.cli import build_parser
from reporting.config import BrokerConfig, Config, DatabaseConfig, HostPort, JournalConfig
from reporting.ha import Role, RoleChange
from reporting.ha.election import StandaloneElection
from reporting.ha.group import GroupElection
from reporting.ha.roles import Started
from reporting.harness import waiting
from reporting.lane import Lane
from reporting.pipeline import Intake
from reporting.samples import sample_report
from reporting.status.metrics import Metrics
from reporting.wire.consumer import Message
from storage.database import Sink
from storage.errors import StaleEpoch
from storage.journal import Journal
from storage.reports import Report, to_record
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


def test_the_text_format_shows_none_of_the_fields() -> None:
    record = logging.LogRecord("reporting.lane", logging.INFO, __file__, 1, "rs: %s", ("x",), None)
    plain = logging.Formatter("%(levelname)s %(name)s: %(message)s").format(record)
    adapter = logs.About(logging.getLogger("reporting.lane"), queue=("q.a", "q.b"), epoch=lambda: 3)
    msg, kwargs = adapter.process("rs: %s", {})
    record.__dict__.update(kwargs["extra"])
    assert logging.Formatter("%(levelname)s %(name)s: %(message)s").format(record) == plain
    assert kwargs["extra"] == {"queue": "q.a,q.b", "epoch": 3}


# -- the pieces' own lines: what they are about -------------------------------------------------

QUEUE = "gvp.reporting.sq"


def about(lines: list[str], text: str) -> dict:
    """The first JSON line whose message holds `text`."""
    found = [line for line in map(json.loads, lines) if text in line["message"]]
    assert found, f"no line with {text!r} in {[json.loads(line)['message'] for line in lines]}"
    return found[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_lane_its_drainer_and_consumer_say_which_queue_and_epoch(
    lines: list[str], tmp_path: Path
) -> None:
    config = Config(
        name="rs-log",
        broker=BrokerConfig(hosts=(HostPort("127.0.0.1", closed_port()),), queues=(QUEUE,)),
        database=DatabaseConfig(url=f"sqlite:///{tmp_path / 'r.db'}"),
        journal=JournalConfig(dir=tmp_path / "journal"),
    )
    (spec,) = config.lanes
    sink = Sink(config.database.url, cluster=spec.fence, journal=spec.key)
    fenced: list[StaleEpoch] = []
    lane = Lane(
        config,
        spec,
        name="rs-log",
        sink=sink,
        metrics=Metrics(),
        role=lambda: Role.ACTIVE,
        on_fenced=fenced.append,
        stood_down=lambda: None,
    )
    try:
        lane.on_role(RoleChange(Role.ACTIVE, 3, "rs-log", "test"))
        waiting.wait_until(lambda: any("not reachable" in line for line in lines), timeout_s=20)
        # A newer holder raises the fence; the drainer's next claim is refused.
        Sink(config.database.url, cluster=spec.fence, journal=spec.key).claim_epoch(5)
        lane.drainer.stop()
        lane.drainer.start(4)
        waiting.wait_until(lambda: fenced, timeout_s=20)
    finally:
        lane.close()
        sink.close()
    unreachable = about(lines, "not reachable")  # the consumer
    assert unreachable["queue"] == QUEUE and "epoch" not in unreachable
    refused = about(lines, "write refused by the fence")  # the drainer
    assert (refused["queue"], refused["epoch"]) == (QUEUE, 4)
    stopped = about(lines, "consumer stopped (stopping)")  # the lane
    assert stopped["queue"] == QUEUE


def test_a_full_journal_pauses_the_intake_of_a_queue(lines: list[str], tmp_path: Path) -> None:
    with Journal(tmp_path / "journal", writer="rs", max_bytes=1) as journal:
        intake = Intake(
            lambda: journal,
            BrokerConfig(queues=(QUEUE,)),
            metrics=Metrics(),
            room=threading.Event(),
            appended=lambda: None,
            may_continue=lambda: False,
        )
        body = json.dumps(sample_report("sq", random.Random(1))).encode()
        message = Message(f"/queue/{QUEUE}", {"report-id": "r1", "ack": "a1"}, body, 0)
        assert intake([message]) is False
    assert about(lines, "journal full")["queue"] == QUEUE


def test_role_changes_say_the_epoch_and_in_a_group_the_queue(lines: list[str]) -> None:
    solo = StandaloneElection(name="rs-solo", on_change=lambda change: None)
    solo.start()
    solo.stop()
    assert about(lines, "rs-solo: role active")["epoch"] == 0
    group = GroupElection(
        name="rs-g",
        zookeeper="127.0.0.1:1",
        cluster="/c",
        queues=[QUEUE],
        session_timeout_s=2.0,
        on_change=lambda queue, change: None,
    )
    slot = group.contest.slots[0]
    group.contest.apply(slot, Started("started"))
    line = about(lines, f"rs-g [{QUEUE}]: role standby")
    assert line["queue"] == QUEUE and "epoch" in line


def test_journal_lines_name_their_segment(lines: list[str], tmp_path: Path) -> None:
    now = datetime.now(UTC)
    records = [to_record(Report(f"r{i}", "sq", QUEUE, {"value": i}, now)) for i in range(30)]
    with Journal(tmp_path / "j", writer="rs", segment_bytes=4096, retain_s=0) as journal:
        first = journal.append_batch(records)
        journal.append_batch(records)
        assert journal.release({first.segment: first.byte}) == [first.segment]
    assert about(lines, "released 1 segment(s)")["segment"] == first.segment
    # A torn write at the end of the open segment: cut off when the journal opens again.
    (newest,) = (tmp_path / "j").glob("*.seg")
    with newest.open("ab") as f:
        f.write(b"\x00junk")
    Journal(tmp_path / "j", writer="rs").close()
    assert about(lines, "truncated torn tail")["segment"] == newest.name
