"""write_batch_retrying: retries while the database is unavailable, never past `stop`."""

import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage.database import Sink, WriteResult
from storage.errors import DatabaseUnavailable, StaleEpoch, StatementTimeout
from storage.reports import Rejected, Report

AT = datetime(2024, 5, 1, tzinfo=UTC)


class FlakySink(Sink):
    """A SQLite sink whose first writes fail as given."""

    def __init__(self, path: Path, failures: list[Exception]) -> None:
        super().__init__(f"sqlite:///{path}", cluster="c", journal="j")
        self.failures = failures
        self.calls = 0

    def write_batch(
        self,
        items: Sequence[Report | Rejected],
        *,
        positions: Mapping[str, int],
        epoch: int,
        committed: Mapping[str, int] | None = None,
    ) -> WriteResult:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return super().write_batch(items, positions=positions, epoch=epoch, committed=committed)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    import storage.database.sink as sink_module

    monkeypatch.setattr(sink_module, "RETRY_INITIAL_S", 0.001)
    monkeypatch.setattr(sink_module, "RETRY_MAX_S", 0.001)
    monkeypatch.setattr(sink_module, "RETRY_JITTER_S", 0.0)


def test_retries_until_the_database_answers(tmp_path: Path, no_backoff: None) -> None:
    sink = FlakySink(tmp_path / "r.db", [DatabaseUnavailable("down")] * 3)
    sink.upgrade()
    seen: list[int] = []
    result = sink.write_batch_retrying(
        [],
        positions={"00000001": 10},
        epoch=1,
        stop=threading.Event(),
        on_retry=lambda attempt, error: seen.append(attempt),
    )
    assert result == WriteResult(0, 0, 0)
    assert seen == [1, 2, 3]
    assert sink.calls == 4
    assert sink.positions() == {"00000001": 10}
    sink.close()


def test_stale_epoch_is_not_retried(tmp_path: Path, no_backoff: None) -> None:
    sink = FlakySink(tmp_path / "r.db", [StaleEpoch("c", 1)])
    with pytest.raises(StaleEpoch):
        sink.write_batch_retrying([], positions={}, epoch=1, stop=threading.Event())
    assert sink.calls == 1
    sink.close()


def test_stop_ends_the_retries_with_the_last_error(tmp_path: Path) -> None:
    stop = threading.Event()
    sink = FlakySink(tmp_path / "r.db", [DatabaseUnavailable(f"down {i}") for i in range(100)])

    def on_retry(attempt: int, error: DatabaseUnavailable) -> None:
        if attempt == 2:
            stop.set()

    with pytest.raises(DatabaseUnavailable, match="down 1"):
        sink.write_batch_retrying([], positions={}, epoch=1, stop=stop, on_retry=on_retry)
    assert sink.calls == 2
    sink.close()


def test_unreachable_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    sink = Sink(f"sqlite:///{tmp_path / 'missing-dir' / 'r.db'}", cluster="c", journal="j")
    assert sink.probe() is False
    with pytest.raises(DatabaseUnavailable):
        sink.write_batch([], positions={}, epoch=1)
    sink.close()


def test_a_batch_that_timed_out_is_handed_back_to_be_split(
    tmp_path: Path, no_backoff: None
) -> None:
    sink = FlakySink(tmp_path / "r.db", [StatementTimeout("slow")] * 3)
    two = [Rejected(f"x{i}", "q", "why", b"", AT) for i in range(2)]
    with pytest.raises(StatementTimeout):
        sink.write_batch_retrying(two, positions={}, epoch=1, stop=threading.Event())
    assert sink.calls == 1
    sink.close()


def test_a_single_record_that_timed_out_is_retried_like_an_outage(
    tmp_path: Path, no_backoff: None
) -> None:
    sink = FlakySink(tmp_path / "r.db", [StatementTimeout("slow")] * 2)
    sink.upgrade()
    one = [Rejected("x", "q", "why", b"", AT)]
    seen: list[int] = []
    result = sink.write_batch_retrying(
        one,
        positions={},
        epoch=1,
        stop=threading.Event(),
        on_retry=lambda attempt, error: seen.append(attempt),
    )
    assert result.rejected == 1 and seen == [1, 2]
    sink.close()


def test_only_an_outages_first_retry_is_a_warning(
    tmp_path: Path, no_backoff: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The reason is said once per change elsewhere: an outage's later retries, every few
    seconds for as long as it lasts, go to the debug log."""
    sink = FlakySink(tmp_path / "r.db", [DatabaseUnavailable("down")] * 4)
    sink.upgrade()
    with caplog.at_level("DEBUG", logger="storage.database.sink"):
        sink.write_batch_retrying([], positions={}, epoch=1, stop=threading.Event())
    retries = [r for r in caplog.records if "failed, retrying" in r.getMessage()]
    assert [r.levelname for r in retries] == ["WARNING", "DEBUG", "DEBUG", "DEBUG"]
