"""Journal folders made anew and segment names given blind, through the public interface only:
files on disk, signals and the harness servers. Each test keeps a ledger of receipted reports
and checks the database for exactly-once, and that reports sent after the fault are stored
within a bounded wait."""

import os
import shutil
from pathlib import Path

import pytest

from reporting.harness.commands import run_command
from reporting.harness.flow import assert_exactly_once
from reporting.harness.instance import Instance
from reporting.harness.waiting import wait_until
from reporting.wire.producer import ReportClient
from tests.integration.test_poison_secret_attacks import (
    NEW_DB_PW,
    OLD_DB_PW,
    end_sessions,
    no_database_password_in,
    rotate_database_password,
    send_ordinary,
    started_database_server,
    write_secret,
)
from tests.integration.test_restart_damage_attacks import pending

pytestmark = pytest.mark.integration


def drained(server: Instance) -> None:
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 60, "the journal drained")


def test_the_folder_removed_under_a_server_that_first_started_with_the_database_down(
    standalone, postgres, pg_url, send_all
) -> None:
    server = standalone()
    # A new deployment: an empty database, down when the server first starts.
    postgres.kill()
    server.start()
    first = send_all(200, "first")
    pending(server, 200)
    postgres.restart()
    drained(server)
    assert_exactly_once(pg_url, first, timeout_s=30)
    # The folder removed under the running server (an operator, a cleanup job): made anew.
    shutil.rmtree(server.journal_dir)
    second = send_all(100, "second")
    try:
        assert_exactly_once(pg_url, first | second, timeout_s=30)
    finally:
        # A restart does not bring them back either.
        server.stop()
        server.start()
    assert_exactly_once(pg_url, first | second, timeout_s=30)


def test_the_drained_live_segment_deleted_under_a_server_that_first_started_with_the_database_down(
    standalone, postgres, pg_url, send_all
) -> None:
    server = standalone()
    postgres.kill()
    server.start()
    first = send_all(200, "first")
    pending(server, 200)
    postgres.restart()
    drained(server)
    assert_exactly_once(pg_url, first, timeout_s=30)
    # Everything in it is stored: deleting it (a cleanup job) takes nothing that is not.
    for segment in server.journal_dir.glob("*.seg"):
        segment.unlink()
    second = send_all(100, "second")
    assert_exactly_once(pg_url, first | second, timeout_s=30)


def test_a_server_killed_while_journalling_blind_then_started_with_the_database_down(
    standalone, postgres, pg_url, send_all
) -> None:
    """Small segments: the database holds positions in names below, between and above the
    ones given blind; a kill -9 before the database answers leaves them blind, and the start
    after it names more blind, all renamed above the database's once it answers. Batches are
    kept small, as a segment rolls between batches only."""
    server = standalone(
        journal={"segment_bytes": 16384}, broker={"max_body_bytes": 8192, "batch_records": 10}
    )
    server.start()
    first = send_all(150, "first")
    assert_exactly_once(pg_url, first, timeout_s=30)
    drained(server)
    server.stop()
    shutil.rmtree(server.journal_dir)
    postgres.kill()
    server.start()
    second = send_all(80, "second")
    pending(server, 80)
    server.kill()
    server.start()
    third = send_all(120, "third")
    pending(server, 200)
    postgres.restart()
    drained(server)
    assert_exactly_once(pg_url, first | second | third, timeout_s=30)
    after = send_all(50, "after")
    assert_exactly_once(pg_url, first | second | third | after, timeout_s=30)


def test_the_database_up_and_down_during_the_blind_phase_and_the_folder_wiped_twice(
    standalone, postgres, pg_url, send_all
) -> None:
    server = standalone(journal={"segment_bytes": 16384}, broker={"max_body_bytes": 8192})
    server.start()
    ids = send_all(100, "first")
    assert_exactly_once(pg_url, ids, timeout_s=30)
    drained(server)
    for round in range(2):
        server.stop()
        shutil.rmtree(server.journal_dir)
        postgres.kill()
        server.start()
        batch = send_all(60, f"blind{round}")
        pending(server, 60)
        postgres.restart()
        postgres.kill()
        more = send_all(40, f"more{round}")
        postgres.restart()
        drained(server)
        ids |= batch | more
        assert_exactly_once(pg_url, ids, timeout_s=30)
    after = send_all(50, "after")
    assert_exactly_once(pg_url, ids | after, timeout_s=30)


def test_replay_of_a_folder_journalled_blind_after_a_kill_then_a_start(
    standalone, postgres, pg_url, send_all
) -> None:
    server = standalone(journal={"segment_bytes": 16384}, broker={"max_body_bytes": 8192})
    server.start()
    first = send_all(100, "first")
    assert_exactly_once(pg_url, first, timeout_s=30)
    drained(server)
    server.stop()
    shutil.rmtree(server.journal_dir)
    postgres.kill()
    server.start()
    blind = send_all(80, "blind")
    pending(server, 80)
    server.kill()
    postgres.restart()
    done = run_command("replay", "--config", str(server.config_path), timeout_s=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert_exactly_once(pg_url, first | blind, timeout_s=10)
    server.start()
    later = send_all(60, "later")
    assert_exactly_once(pg_url, first | blind | later, timeout_s=30)


# -- the database password file changed while reports flow -----------------------------------


def waiting_on_a_pipe(server: Instance) -> bool:
    pid = server.server_pid or server.pid
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "wchan").read_text() in ("wait_for_partner", "fifo_open"):
                return True
        except OSError:
            continue
    return False


def test_a_password_file_swapped_for_a_pipe_and_put_right_again(
    secure_postgres, activemq, queues, queue_prefix, tmp_path: Path, instances
) -> None:
    server, pw_file, owner = started_database_server(
        secure_postgres, activemq, queues, tmp_path, instances
    )
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20) as client:
        before = send_ordinary(client, queue_prefix, "before", 20)
        client.flush()
    assert_exactly_once(owner, before, timeout_s=30)
    # The file swapped (rename over it, as a secrets tool does) for a pipe nobody writes to.
    pipe = tmp_path / "db.pw.fifo"
    os.mkfifo(pipe, 0o600)
    os.rename(pipe, pw_file)
    end_sessions(secure_postgres)
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20) as client:
        during = send_ordinary(client, queue_prefix, "during", 20)
        client.flush()
    wait_until(lambda: server.status()["journal"]["pending"] >= 20, 30, "journalled")
    # A login finds a pipe: refused at once and said, as a database that cannot be reached; no
    # login waits on it for a writer that never comes.
    wait_until(
        lambda: "not a regular file" in (server.status()["database_error"] or ""),
        30,
        "the pipe refused",
    )
    assert not waiting_on_a_pipe(server)
    # Put right: a regular file with the password again.
    fixed = tmp_path / "db.pw.new"
    write_secret(fixed, OLD_DB_PW)
    os.rename(fixed, pw_file)
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20) as client:
        after = send_ordinary(client, queue_prefix, "after", 20)
        client.flush()
    assert_exactly_once(owner, before | during | after, timeout_s=30)
    no_database_password_in(server)


def test_a_password_file_swapped_for_a_symlink_to_a_rotated_one_while_reports_flow(
    secure_postgres, activemq, queues, queue_prefix, tmp_path: Path, instances
) -> None:
    server, pw_file, owner = started_database_server(
        secure_postgres, activemq, queues, tmp_path, instances
    )
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20) as client:
        before = send_ordinary(client, queue_prefix, "before", 20)
        client.flush()
    assert_exactly_once(owner, before, timeout_s=30)
    # The role's password rotated first: the server's new logins are refused meanwhile.
    rotate_database_password(secure_postgres)
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20) as client:
        during = send_ordinary(client, queue_prefix, "during", 20)
        client.flush()
    wait_until(lambda: server.status()["journal"]["pending"] >= 20, 30, "journalled")
    # Then a symlink to the file with the new one put in its place.
    target = tmp_path / "secrets" / "db.pw"
    target.parent.mkdir(mode=0o700)
    write_secret(target, NEW_DB_PW)
    link = tmp_path / "db.pw.link"
    link.symlink_to(target)
    os.rename(link, pw_file)
    with ReportClient([activemq.host], ledger=tmp_path / "ledger", in_flight=20) as client:
        after = send_ordinary(client, queue_prefix, "after", 20)
        client.flush()
    assert_exactly_once(owner, before | during | after, timeout_s=60)
    wait_until(lambda: server.status()["journal"]["pending"] == 0, 30, "the journal drained")
    no_database_password_in(server)
