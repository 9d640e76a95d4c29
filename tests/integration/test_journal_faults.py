"""The journal under a standalone server on real ActiveMQ and PostgreSQL: a damaged segment, a
crash leftover, a second process with the same name, a segment removed under its writer and a
full disk. Each test keeps a ledger of receipted reports and checks the database against it."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reporting.cli import main
from reporting.errors import HarnessError
from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.instance import Instance
from reporting.harness.waiting import wait_until
from storage.database import Sink
from storage.journal import Journal
from storage.reports import from_record

pytestmark = pytest.mark.integration


def journalled(server: Instance, count: int) -> None:
    wait_until(
        lambda: server.status()["journal"]["pending"] == count, 60, f"{count} journalled reports"
    )


def stored_counts(pg_url: str, ids: set[str]) -> dict[str, int]:
    sink = Sink(pg_url, cluster="verify", journal="verify")
    try:
        return sink.report_id_counts(ids)
    finally:
        sink.close()


def test_one_flipped_byte_loses_only_its_record(
    standalone, postgres, pg_url, capsys, send_all
) -> None:
    server = standalone()
    server.start()
    postgres.kill()
    ids = send_all(300)
    assert len(ids) == 300
    journalled(server, 300)
    server.kill()
    # Record k of N, in the middle of the segment: its bytes, and which report it holds.
    with Journal.open_readonly(server.journal_dir) as journal:
        entries = list(journal.read())
    assert len(entries) == 300 and len({e.position.segment for e in entries}) == 1
    k = 150
    segment = server.journal_dir / entries[k].position.segment
    start, end = entries[k - 1].position.byte, entries[k].position.byte
    damaged_id = from_record(entries[k].data).report_id
    data = bytearray(segment.read_bytes())
    original = bytes(data[start:end])
    data[(start + end) // 2] ^= 0x10
    segment.write_bytes(bytes(data))

    postgres.restart()
    server.start()
    assert_exactly_once(pg_url, ids - {damaged_id})
    assert stored_counts(pg_url, {damaged_id}) == {damaged_id: 0}
    quarantine = server.journal_dir / "quarantine"
    [saved] = list(quarantine.iterdir())
    assert saved.name == f"{segment.name}.bytes-{start}-{end}"
    assert saved.read_bytes() == bytes(data[start:end]) != original  # as found on disk
    assert "set aside" in server.log_tail(400)
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 60, "the journal to drain")
    assert main(["journal", "inspect", str(server.journal_dir)]) == 0
    out = capsys.readouterr().out
    assert f"quarantined: 1\n  {saved} ({end - start} bytes)" in out


def test_a_zero_filled_next_segment_does_not_stop_start_up(
    standalone, postgres, pg_url, send_all
) -> None:
    server = standalone()
    server.start()
    postgres.kill()
    ids = send_all(100)
    journalled(server, 100)
    server.kill()
    [segment] = server.journal_dir.glob("*.seg")
    # What a crash between creating the next segment and its fsync can leave.
    leftover = server.journal_dir / f"{int(segment.name[:8]) + 1:08d}{segment.name[8:]}"
    leftover.write_bytes(bytes(64))
    postgres.restart()
    server.start()
    assert_exactly_once(pg_url, ids)
    assert not leftover.exists()
    assert not (server.journal_dir / "quarantine").exists()


def test_a_second_process_with_the_same_name_exits_naming_the_first(
    standalone, pg_url, tmp_path: Path, send_all
) -> None:
    first = standalone()
    first.start()
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in first.config.items()}
    del config["http"]  # its own port, the same name and journal
    second = Instance(tmp_path / "second", config)
    with pytest.raises(HarnessError, match="code 1"):
        second.start(timeout_s=60)
    lines = [
        line
        for line in second.log_path.read_text().splitlines()
        if not line.startswith("--- harness")
    ]
    assert lines == [
        f"reporting-server: journal {first.journal_dir}: writer 'rs-solo' is already running "
        f"as pid {first.pid}"
    ]
    # The first goes on undisturbed.
    ids = send_all(200)
    assert_exactly_once(pg_url, ids)


def test_a_segment_removed_under_its_writer_is_redelivered(standalone, pg_url, send_all) -> None:
    server = standalone()
    server.start()
    before_ids = send_all(200, "l1")
    assert_exactly_once(pg_url, before_ids)
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 30, "the journal to drain")
    # Drained, but still the segment the writer appends to.
    [live] = server.journal_dir.glob("*.seg")
    live.unlink()
    after_ids = send_all(200, "l2")
    assert_exactly_once(pg_url, before_ids | after_ids)
    log = server.log_tail(400)
    assert f"segment {live.name} was removed while being written" in log
    assert "the batch goes back to the broker" in log


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (mounted as root), unmounted after the test's instances have stopped."""
    if os.geteuid() != 0:
        pytest.fail("the full-disk tests mount a tmpfs: run them as root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_pause_ends_once_the_database_is_back(
    small_disk: Path, standalone, postgres, pg_url, send_all
) -> None:
    server = standalone(journal={"dir": str(small_disk / "journal")})
    server.start()
    postgres.kill()
    ids = send_all(6000)
    assert len(ids) == 6000
    wait_until(lambda: server.status()["journal"]["paused"], 120, "consumption to pause")
    paused_at = server.status()["journal"]["pending"]
    assert 0 < paused_at < 6000
    postgres.restart()
    assert_exactly_once(pg_url, ids, timeout_s=240)
    wait_until(lambda: not server.status()["journal"]["paused"], 30, "consumption to resume")


def test_a_disk_filled_from_outside_pauses_and_resumes_with_the_database_up(
    small_disk: Path, standalone, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    server = standalone(journal={"dir": str(small_disk / "journal")})
    server.start()
    flow = Flow(
        [activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=4000, rate=200
    )
    flow.start()
    wait_until(lambda: server.status()["stored"] > 200, 60, "reports flowing")
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\xaa" * 4096)
    except OSError:
        pass  # the disk is full
    finally:
        os.close(fd)
    # Some room is left, less than the stream needs: the journal must reuse what it drained.
    os.truncate(filler, max(0, filler.stat().st_size - 64 * 1024))
    wait_until(lambda: server.status()["journal"]["paused"], 60, "consumption to pause")
    stored = server.status()["stored"]
    wait_until(
        lambda: server.status()["stored"] > stored + 500,
        120,
        "consumption to go on while the filler is still there",
    )
    filler.unlink()
    assert_exactly_once(pg_url, flow.join())
    wait_until(lambda: not server.status()["journal"]["paused"], 30, "consumption to resume")


def test_a_journal_folder_made_anew_does_not_reuse_a_drained_segment_name(
    standalone, activemq, pg_url, queue_prefix, tmp_path: Path, send_all
) -> None:
    server = standalone()
    server.start()
    first_ids = send_all(300, "first")
    assert_exactly_once(pg_url, first_ids)
    server.stop()
    # The folder replaced (wiped, or a relative path now read from another folder): the
    # database still holds a position in the segment the old folder had open.
    shutil.rmtree(server.journal_dir)
    server.start()
    second = Flow(
        [activemq.host], tmp_path / "second", queue_prefix=queue_prefix, count=300, rate=0
    )
    second.start().join()
    assert_exactly_once(pg_url, first_ids | second.ids(), timeout_s=60)
