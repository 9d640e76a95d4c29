"""The intake against a real journal (and, for the full disk, a real drainer on SQLite): every
pause ends, a batch that cannot fit goes in parts, and a batch whose segment vanished is not
acked."""

import errno
import json
import random
import threading
import time
from pathlib import Path

import pytest

from reporting.config import BrokerConfig
from reporting.pipeline import Intake
from reporting.samples import sample_report
from reporting.status.metrics import Metrics
from reporting.wire.consumer import Message
from storage.database import Sink
from storage.journal import Journal
from storage.journal import journal as journal_module
from tests.unit.pipeline.test_drainer import drainer_for

QUEUE = "gvp.reporting.sq"


def messages(start: int, count: int) -> list[Message]:
    rng = random.Random(start)
    return [
        Message(
            f"/queue/{QUEUE}",
            {"report-id": f"r{i}", "message-id": f"m{i}", "ack": f"a{i}"},
            json.dumps(sample_report("sq", rng)).encode(),
            0,
        )
        for i in range(start, start + count)
    ]


def make_intake(journal: Journal, room: threading.Event | None = None) -> Intake:
    return Intake(
        lambda: journal,
        BrokerConfig(queues=(QUEUE,)),
        metrics=Metrics(),
        room=room or threading.Event(),
        appended=lambda: None,
        may_continue=lambda: True,
    )


def test_a_batch_larger_than_an_empty_journal_goes_in_parts(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal", writer="rs", max_bytes=1500) as journal:
        room = threading.Event()
        intake = make_intake(journal, room)
        result: list[bool] = []
        consumer = threading.Thread(target=lambda: result.append(intake(messages(0, 20))))
        consumer.start()
        # ~200 bytes each, 4000 in all: the parts go in as a drain makes room for them.
        positions: dict[str, int] = {}
        drained: list[bytes] = []

        def drain() -> None:
            for entry in journal.read(positions):
                positions[entry.position.segment] = entry.position.byte
                drained.append(entry.data)
            journal.release(positions)
            room.set()

        deadline = time.monotonic() + 30
        while consumer.is_alive() and time.monotonic() < deadline:
            drain()
            consumer.join(0.05)
        drain()
        assert result == [True]
        assert [json.loads(d)["id"] for d in drained] == [f"r{i}" for i in range(20)]


def test_a_batch_whose_segment_was_removed_is_not_acked(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal", writer="rs") as journal:
        intake = make_intake(journal)
        assert intake(messages(0, 5))
        for path in (tmp_path / "journal").glob("*.seg"):
            path.unlink()
        assert not intake(messages(5, 5))  # left to the broker
        assert intake(messages(5, 5))  # the redelivery
        assert len(list(journal.read())) == 5


def test_a_full_disk_pause_ends_once_everything_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "journal"
    disk_bytes = 20_000
    real_write_all = journal_module.write_all

    def small_disk(fd: int, data: bytes, pos: int) -> None:
        # A disk of `disk_bytes` holding the segments: freeing them makes room.
        used = sum(p.stat().st_size for p in directory.glob("*.seg"))
        if used + len(data) > disk_bytes:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fd, data, pos)

    monkeypatch.setattr(journal_module, "write_all", small_disk)
    journal = Journal(directory, writer="rs")
    sink = Sink(f"sqlite:///{tmp_path / 'r.db'}", cluster="rs", journal="rs")
    room = threading.Event()
    drainer = drainer_for(journal, sink, batch_records=50, on_room=room.set)
    intake = make_intake(journal, room)
    acked: list[int] = []

    def consume() -> None:
        for start in range(0, 1000, 50):
            if intake(messages(start, 50)):
                acked.append(start)

    consumer = threading.Thread(target=consume, daemon=True)
    try:
        consumer.start()
        drainer.start(0)
        consumer.join(60)
        assert not consumer.is_alive(), f"paused for good after {len(acked)} batches"
        assert len(acked) == 20
        deadline = time.monotonic() + 30
        while drainer.stored < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the drainer's count
        ids = sink.report_id_counts({f"r{i}" for i in range(1000)})
        assert sorted(ids.values()) == [1] * 1000
    finally:
        drainer.stop()
        journal.close()
        sink.close()
