"""Damaged journal files and restart orders nobody plans, through the public interface only:
files on disk, signals, the TCP proxy and the harness servers. Each test keeps a ledger of
receipted reports and checks the database for exactly-once, and that reports sent after the
fault are stored within a bounded wait."""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reporting.errors import HarnessError
from reporting.harness.commands import run_command
from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.instance import Instance
from reporting.harness.pair import active_of, roles
from reporting.harness.waiting import wait_until
from storage.database import Sink
from storage.journal import Journal
from storage.reports import from_record
from tests.integration.conftest import nothing_stranded

pytestmark = pytest.mark.integration


def pending(server: Instance, count: int) -> None:
    wait_until(
        lambda: server.status()["journal"]["pending"] == count, 60, f"{count} journalled reports"
    )


def stored_counts(url: str, ids: set[str]) -> dict[str, int]:
    sink = Sink(url, cluster="verify", journal="verify")
    try:
        return sink.report_id_counts(ids)
    finally:
        sink.close()


@pytest.mark.parametrize(
    ("first_count", "drain_s"),
    [
        pytest.param(300, 60, id="new-segment-within-the-old-position"),
        pytest.param(50, 20, id="new-segment-past-the-old-position"),
    ],
)
def test_a_journal_folder_made_anew_while_the_database_is_down_loses_nothing(
    standalone, postgres, pg_url, send_all, first_count: int, drain_s: float
) -> None:
    """The folder has no record of the segment names its writer used, and the database that
    knows them is down: the reports are journalled under names that may have been used, and
    renamed above the database's once it answers. The new segment ends within the position
    the database holds for its name, or grows past it."""
    server = standalone()
    server.start()
    first = send_all(first_count, "first")
    assert_exactly_once(pg_url, first)
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 30, "the journal drained")
    server.stop()
    # A new disk under the journal (or the folder wiped) while the database is out: the
    # database still holds a position in the segment the old folder had open.
    shutil.rmtree(server.journal_dir)
    postgres.kill()
    server.start()
    second = send_all(300, "second")
    pending(server, 300)
    postgres.restart()
    wait_until(lambda: server.status()["journal"]["pending"] == 0, drain_s, "the journal drained")
    assert_exactly_once(pg_url, first | second, timeout_s=30)
    assert "renamed 00000002-e0000000-rs-solo.seg" in server.log_path.read_text()


def this_start(server: Instance) -> list[str]:
    """The log lines of the instance's last start (the harness's own lines left out)."""
    text = server.log_path.read_text().rsplit("--- harness: starting", 1)[-1]
    return [line for line in text.splitlines()[1:] if not line.startswith("--- harness")]


def test_a_lock_file_replaced_by_a_directory_stops_start_up_in_one_line(
    standalone, pg_url, send_all
) -> None:
    server = standalone()
    server.start()
    first = send_all(100, "first")
    assert_exactly_once(pg_url, first)
    server.stop()
    lock = server.journal_dir / "locks" / "rs-solo.lock"
    assert lock.is_file()
    lock.unlink()
    lock.mkdir()
    with pytest.raises(HarnessError, match="code 1"):
        server.start(timeout_s=30)
    lines = this_start(server)
    assert len(lines) == 1 and "rs-solo.lock" in lines[0], lines
    assert "Traceback" not in "\n".join(lines)
    lock.rmdir()
    server.start()
    second = send_all(100, "second")
    assert_exactly_once(pg_url, first | second)


def test_a_byte_flipped_in_the_live_segment_loses_only_its_record(
    standalone, postgres, pg_url, send_all
) -> None:
    # While the database is down the drainer holds one batch and its read-ahead in memory, and
    # stores them as read once it is back: small drain batches keep the damaged record out of
    # them, whatever the first appends held, so that it is read from the damaged file.
    server = standalone(database={"batch_records": 10})
    server.start()
    postgres.kill()
    ids = send_all(200, "first")
    pending(server, 200)
    # The segment the running writer appends to, damaged under it.
    with Journal.open_readonly(server.journal_dir) as journal:
        entries = list(journal.read())
    assert len(entries) == 200 and len({e.position.segment for e in entries}) == 1
    k = 120
    segment = server.journal_dir / entries[k].position.segment
    start, end = entries[k - 1].position.byte, entries[k].position.byte
    damaged_id = from_record(entries[k].data).report_id
    with open(segment, "r+b") as f:
        f.seek((start + end) // 2)
        byte = f.read(1)
        f.seek((start + end) // 2)
        f.write(bytes([byte[0] ^ 0x10]))
    postgres.restart()
    # Reports sent after the damage are stored too: the flow does not stop at it.
    later = send_all(200, "later")
    assert_exactly_once(pg_url, (ids | later) - {damaged_id}, timeout_s=60)
    assert stored_counts(pg_url, {damaged_id}) == {damaged_id: 0}
    quarantine = server.journal_dir / "quarantine"
    assert [p.name for p in quarantine.iterdir()] == [f"{segment.name}.bytes-{start}-{end}"]


def test_an_older_segment_cut_mid_record_loses_only_the_cut_records(
    standalone, postgres, pg_url, send_all
) -> None:
    server, ids, entries = backlog(standalone, postgres, send_all)
    segments = sorted({e.position.segment for e in entries})
    assert len(segments) >= 3, segments
    # The second segment cut in the middle of one of its records (a copy that stopped short).
    victim = segments[1]
    inside = [i for i, e in enumerate(entries) if e.position.segment == victim]
    k = inside[len(inside) // 2]
    start, end = entries[k - 1].position.byte, entries[k].position.byte
    path = server.journal_dir / victim
    with open(path, "r+b") as f:
        f.truncate((start + end) // 2)
    lost = {from_record(entries[i].data).report_id for i in inside if i >= k}
    postgres.restart()
    server.start()
    later = send_all(100, "later")
    assert_exactly_once(pg_url, (ids | later) - lost, timeout_s=60)
    log = server.log_tail(400)
    assert victim in log and ("torn" in log or "set aside" in log), log


def test_zookeeper_down_when_a_shared_pair_starts(
    shared_pair, zookeeper, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    pair = shared_pair()
    a, b = pair
    zookeeper.kill()
    try:
        for instance in pair:
            instance.start()
        # No lock service: nobody may take the role, and nothing is consumed.
        flow = Flow(
            [activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=300, rate=0
        )
        flow.start()
        wait_until(lambda: flow.confirmed >= 100, 60, "reports receipted by the broker")
        assert active_of(pair) is None, roles(pair)
    finally:
        zookeeper.restart()
    wait_until(lambda: active_of(pair) is not None, 60, "an active instance")
    ids = flow.join()
    assert_exactly_once(pg_url, ids, timeout_s=60)
    nothing_stranded(pair)
    assert sorted(roles(pair).values()) == ["active", "standby"]


def test_the_active_killed_during_the_replay_of_a_backlog(
    shared_pair, postgres, activemq, pg_url, queue_prefix, tmp_path: Path, send_all
) -> None:
    pair = shared_pair()
    active, standby = pair.start()
    postgres.kill()
    backlog = send_all(3000, "backlog")
    wait_until(lambda: active.status()["journal"]["pending"] == 3000, 60, "the backlog journalled")
    postgres.restart()
    # The database is back and the active replays its backlog; it dies in the middle of it.
    wait_until(
        lambda: 0 < (active.try_status() or {}).get("journal", {}).get("pending", 3000) < 2700,
        60,
        "the replay under way",
        every_s=0.02,
    )
    active.kill()
    wait_until(lambda: active_of([standby]) is standby, 30, "the standby taking over")
    later = send_all(300, "later")
    active.start()
    assert_exactly_once(pg_url, backlog | later, timeout_s=60)
    nothing_stranded(pair)


def through(proxy, url: str, port: int) -> str:
    """`url` with the database's address replaced by the proxy's."""
    return url.replace(f"127.0.0.1:{port}", proxy.host)


def test_the_actives_database_path_dark_then_the_active_killed_in_the_dark(
    shared_pair, postgres, tcp_proxy, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    proxy = tcp_proxy("127.0.0.1", postgres.port)
    pair = shared_pair(**{"rs-a": {"database": {"url": through(proxy, pg_url, postgres.port)}}})
    a, b = pair
    a.start()
    wait_until(lambda: roles([a])[a.name] == "active", 30, "rs-a active")
    b.start()
    wait_until(lambda: roles([b])[b.name] == "standby", 30, "rs-b standby")
    flow = Flow(
        [activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=1500, rate=300
    )
    flow.start()
    wait_until(lambda: a.status()["stored"] > 300, 30, "reports flowing")
    # The active's path to the database goes dark in the middle of its writes: it keeps the
    # role (ZooKeeper answers) and buffers; its transaction's bytes wait in the dark.
    proxy.blackhole()
    wait_until(lambda: a.status()["journal"]["pending"] > 300, 30, "rs-a buffering")
    a.kill()
    wait_until(lambda: active_of([b]) is b, 30, "rs-b active")
    # What the dead writer sent before it died arrives now.
    proxy.heal()
    ids = flow.join()
    assert_exactly_once(pg_url, ids, timeout_s=60)
    a.start()
    nothing_stranded(pair)


def test_both_instances_of_a_shared_pair_restarted_together_while_reports_flow(
    shared_pair, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    pair = shared_pair()
    a, b = pair
    pair.start()
    flow = Flow(
        [activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=1500, rate=400
    )
    flow.start()
    wait_until(lambda: sum(i.status()["stored"] for i in pair) > 300, 30, "reports flowing")
    with ThreadPoolExecutor(2) as both:
        for done in [both.submit(a.kill), both.submit(b.stop)]:
            done.result()
    with ThreadPoolExecutor(2) as both:
        for done in [both.submit(a.start), both.submit(b.start)]:
            done.result()
    wait_until(lambda: active_of(pair) is not None, 30, "an active instance")
    ids = flow.join()
    assert_exactly_once(pg_url, ids, timeout_s=60)
    nothing_stranded(pair)


def test_the_dead_active_restarted_while_its_peer_takes_over(
    shared_pair, activemq, pg_url, queue_prefix, tmp_path: Path
) -> None:
    pair = shared_pair()
    active, standby = pair.start()
    flow = Flow(
        [activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=1500, rate=400
    )
    flow.start()
    wait_until(lambda: active.status()["stored"] > 300, 30, "reports flowing")
    active.kill()
    # Back before its session has expired: its old lock node still stands, the peer waits on it.
    active.start()
    wait_until(lambda: active_of(pair) is not None, 30, "an active instance")
    ids = flow.join()
    assert_exactly_once(pg_url, ids, timeout_s=60)
    nothing_stranded(pair)
    assert sorted(roles(pair).values()) == ["active", "standby"]


def test_the_broker_down_when_a_standalone_server_starts(
    standalone, activemq, pg_url, send_all
) -> None:
    server = standalone()
    activemq.kill()
    try:
        server.start()
        assert server.status()["broker"] == "disconnected"
    finally:
        activemq.restart()
    wait_until(lambda: server.status()["broker"] == "connected", 60, "the broker connected")
    ids = send_all(300)
    assert_exactly_once(pg_url, ids, timeout_s=60)


def test_a_segment_of_a_writer_gone_for_good_is_drained_by_the_active(
    standalone, shared_pair, postgres, pg_url, send_all
) -> None:
    # A standalone instance named rs-old buffered reports while the database was out, and died.
    old = standalone("rs-old")
    old.start()
    postgres.kill()
    left = send_all(200, "left")
    pending(old, 200)
    old.kill()
    # Its segment is moved into the shared journal of the pair that replaces it.
    pair = shared_pair()
    shared = pair[0].journal_dir
    shared.mkdir(mode=0o700, parents=True, exist_ok=True)
    [segment] = old.journal_dir.glob("*.seg")
    shutil.copy2(segment, shared / segment.name)
    os.chmod(shared / segment.name, 0o600)
    postgres.restart()
    pair.start()
    later = send_all(200, "later")
    assert_exactly_once(pg_url, left | later, timeout_s=60)
    nothing_stranded(pair)


def test_a_directory_with_a_segment_name_stops_start_up_in_one_line(
    standalone, pg_url, send_all
) -> None:
    server = standalone()
    server.start()
    first = send_all(100, "first")
    assert_exactly_once(pg_url, first)
    server.stop()
    odd = server.journal_dir / "00000099-e0000000-rs-solo.seg"
    odd.mkdir()
    with pytest.raises(HarnessError, match="code 1"):
        server.start(timeout_s=30)
    lines = this_start(server)
    assert len(lines) == 1 and odd.name in lines[0], lines
    odd.rmdir()
    server.start()
    second = send_all(100, "second")
    assert_exactly_once(pg_url, first | second)


def test_the_live_segment_emptied_under_its_writer_loses_only_what_it_held(
    standalone, postgres, pg_url, send_all
) -> None:
    server = standalone()
    server.start()
    postgres.kill()
    gone = send_all(200, "gone")
    pending(server, 200)
    # A clean-up job empties the file the writer appends to (`: > segment`): the same file,
    # its bytes gone.
    [live] = server.journal_dir.glob("*.seg")
    os.truncate(live, 0)
    later = send_all(200, "later")
    postgres.restart()
    assert_exactly_once(pg_url, later, timeout_s=60)
    assert set(stored_counts(pg_url, gone).values()) <= {0, 1}
    more = send_all(100, "more")
    assert_exactly_once(pg_url, later | more, timeout_s=60)
    log = server.log_tail(400)
    assert live.name in log, log


def test_a_backlog_left_by_a_kill_9_replayed_by_a_start_with_the_database_down(
    standalone, postgres, pg_url, send_all
) -> None:
    server = standalone()
    server.start()
    postgres.kill()
    first = send_all(300, "first")
    pending(server, 300)
    server.kill()
    server.start()
    second = send_all(300, "second")
    pending(server, 600)
    postgres.restart()
    assert_exactly_once(pg_url, first | second, timeout_s=60)
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 30, "the journal drained")


def test_a_segregated_pair_started_with_zookeeper_and_the_database_down(
    segregated_pair,
    zookeeper,
    postgres,
    activemq,
    backup_broker,
    pg_url,
    queue_prefix,
    tmp_path: Path,
) -> None:
    pair = segregated_pair()
    primary, backup = pair
    zookeeper.kill()
    postgres.kill()
    try:
        primary.start()
        backup.start()
        to_primary = Flow(
            [activemq.host], tmp_path / "p", queue_prefix=queue_prefix, count=200, rate=0
        )
        to_backup = Flow(
            [backup_broker.host], tmp_path / "b", queue_prefix=queue_prefix, count=200, rate=0
        )
        to_primary.start().join()
        to_backup.start().join()
        zookeeper.restart()
        wait_until(
            lambda: roles(pair) == {primary.name: "active", backup.name: "standby"},
            60,
            "the primary active, the backup standby",
        )
    finally:
        postgres.restart()
    later = Flow([activemq.host], tmp_path / "l", queue_prefix=queue_prefix, count=200, rate=0)
    later.start().join()
    ids = to_primary.ids() | to_backup.ids() | later.ids()
    assert_exactly_once(pg_url, ids, timeout_s=60)
    nothing_stranded(pair)


def backlog(standalone, postgres, send_all, count: int = 300) -> tuple[Instance, set[str], list]:
    """A standalone server that journalled `count` reports over several segments while the
    database was down, then was killed -9; the reports' ids and its journal's entries. The
    database is down on return. A segment rolls between batches only, so batches are kept small:
    one batch of a fast sender could otherwise fill most of a segment on its own."""
    server = standalone(
        journal={"segment_bytes": 16384}, broker={"max_body_bytes": 8192, "batch_records": 10}
    )
    server.start()
    postgres.kill()
    ids = send_all(count)
    pending(server, count)
    server.kill()
    with Journal.open_readonly(server.journal_dir) as journal:
        entries = list(journal.read())
    assert len(entries) == count
    return server, ids, entries


def test_a_damaged_segment_header_loses_no_record(standalone, postgres, pg_url, send_all) -> None:
    server, ids, entries = backlog(standalone, postgres, send_all)
    segments = sorted({e.position.segment for e in entries})
    assert len(segments) >= 3, segments
    path = server.journal_dir / segments[1]
    with open(path, "r+b") as f:
        f.write(b"XXXX")  # the magic of the header
    postgres.restart()
    server.start()
    later = send_all(100, "later")
    assert_exactly_once(pg_url, ids | later, timeout_s=60)
    assert any((server.journal_dir / "quarantine").iterdir())


def test_a_zero_filled_block_in_the_middle_of_a_segment_loses_only_its_records(
    standalone, postgres, pg_url, send_all
) -> None:
    server, ids, entries = backlog(standalone, postgres, send_all)
    segments = sorted({e.position.segment for e in entries})
    victim = segments[1]
    inside = [i for i, e in enumerate(entries) if e.position.segment == victim]
    # What a power loss can leave: a block of zeros where acknowledged records were.
    first, last = inside[2], inside[5]
    start, end = entries[first - 1].position.byte, entries[last].position.byte
    path = server.journal_dir / victim
    with open(path, "r+b") as f:
        f.seek(start + 3)
        f.write(bytes(end - start - 6))
    lost = {from_record(entries[i].data).report_id for i in range(first, last + 1)}
    postgres.restart()
    server.start()
    later = send_all(100, "later")
    assert_exactly_once(pg_url, (ids | later) - lost, timeout_s=60)
    assert set(stored_counts(pg_url, lost).values()) == {0}
    assert [p.name for p in (server.journal_dir / "quarantine").iterdir()] == [
        f"{victim}.bytes-{start}-{end}"
    ]


def test_replay_of_a_backlog_with_a_flipped_byte_then_a_start(
    standalone, postgres, pg_url, send_all
) -> None:
    server, ids, entries = backlog(standalone, postgres, send_all)
    k = len(entries) // 2
    segment = server.journal_dir / entries[k].position.segment
    start, end = entries[k - 1].position.byte, entries[k].position.byte
    if entries[k - 1].position.segment != entries[k].position.segment:
        k, start = k + 1, end
        end = entries[k].position.byte
    damaged = from_record(entries[k].data).report_id
    with open(segment, "r+b") as f:
        f.seek((start + end) // 2)
        byte = f.read(1)
        f.seek((start + end) // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    postgres.restart()
    done = run_command("replay", "--config", str(server.config_path), timeout_s=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert_exactly_once(pg_url, ids - {damaged}, timeout_s=10)
    server.start()
    later = send_all(100, "later")
    assert_exactly_once(pg_url, (ids | later) - {damaged}, timeout_s=60)
    assert stored_counts(pg_url, {damaged}) == {damaged: 0}


def test_the_segregated_primary_restarted_while_the_backup_takes_over(
    segregated_pair, activemq, backup_broker, pg_url, queue_prefix, tmp_path: Path
) -> None:
    pair = segregated_pair()
    primary, backup = pair.start()
    flow = Flow(
        [activemq.host, backup_broker.host],
        tmp_path / "ledger",
        queue_prefix=queue_prefix,
        count=1500,
        rate=400,
    )
    flow.start()
    wait_until(lambda: primary.status()["stored"] > 300, 30, "reports flowing")
    primary.kill()
    # Back at once: the node of its dead session still stands while the backup waits it out.
    primary.start()
    wait_until(
        lambda: roles(pair) == {primary.name: "active", backup.name: "standby"},
        60,
        "the primary active, the backup standby",
    )
    ids = flow.join()
    assert_exactly_once(pg_url, ids, timeout_s=60)
    nothing_stranded(pair)


def test_a_lock_file_replaced_by_a_pipe_stops_start_up_in_one_line(
    standalone, pg_url, send_all
) -> None:
    server = standalone()
    server.start()
    first = send_all(100, "first")
    assert_exactly_once(pg_url, first)
    server.stop()
    lock = server.journal_dir / "locks" / "rs-solo.lock"
    lock.unlink()
    os.mkfifo(lock, 0o600)
    with pytest.raises(HarnessError, match="code 1"):
        server.start(timeout_s=30)
    lines = this_start(server)
    assert "Traceback" not in "\n".join(lines)
    assert len(lines) == 1 and "rs-solo.lock" in lines[0], lines


def test_database_broker_and_zookeeper_down_under_a_shared_pair_back_in_reverse_order(
    shared_pair, postgres, activemq, zookeeper, pg_url, queue_prefix, tmp_path: Path
) -> None:
    pair = shared_pair()
    pair.start()
    flow = Flow(
        [activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=1500, rate=300
    )
    flow.start()
    wait_until(lambda: sum(i.status()["stored"] for i in pair) > 300, 30, "reports flowing")
    postgres.kill()
    activemq.kill()
    zookeeper.kill()
    try:
        zookeeper.restart()
        activemq.restart()
    finally:
        postgres.restart()
    wait_until(lambda: active_of(pair) is not None, 60, "an active instance")
    ids = flow.join()
    assert_exactly_once(pg_url, ids, timeout_s=90)
    nothing_stranded(pair)


def test_the_journal_folder_removed_under_a_running_server(standalone, pg_url, send_all) -> None:
    server = standalone()
    server.start()
    first = send_all(200, "first")
    assert_exactly_once(pg_url, first)
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 30, "the journal drained")
    shutil.rmtree(server.journal_dir)
    second = send_all(200, "second")
    assert_exactly_once(pg_url, first | second, timeout_s=15)
