"""The harness servers against their real protocols: durability across kill -9, faults, cleanup."""

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from reporting.harness import Postgres, processes

pytestmark = pytest.mark.integration


def test_postgres_row_survives_kill_of_postmaster(postgres: Postgres, pg_url: str) -> None:
    database = pg_url.rsplit("/", 1)[1]
    with postgres.connect(database) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('committed before kill')")
        conn.commit()
    postmaster = postgres.pid
    os.kill(postmaster, signal.SIGKILL)
    # The backends notice the postmaster's death and exit on their own.
    assert processes.wait_group_gone(postmaster, timeout_s=20)
    postgres.restart()
    assert postgres.pid != postmaster
    with postgres.connect(database) as conn:
        rows = conn.execute("SELECT v FROM kept").fetchall()
    assert rows == [("committed before kill",)]


def test_postgres_pause_blocks_queries_and_resume_releases_them(postgres: Postgres) -> None:
    postgres.pause()
    try:
        assert postgres.is_paused()
        with pytest.raises(psycopg.OperationalError):
            postgres.connect(timeout_s=1)
    finally:
        postgres.resume()
    with postgres.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pg_url_gives_each_test_its_own_database(postgres: Postgres, pg_url: str) -> None:
    database = pg_url.rsplit("/", 1)[1]
    assert pg_url == f"postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/{database}"
    with postgres.connect(database) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)


def test_servers_left_running_are_stopped_when_the_interpreter_exits(tmp_path) -> None:
    script = (
        "import sys\n"
        "from reporting.harness import Postgres\n"
        f"pg = Postgres({str(tmp_path / 'pg')!r})\n"
        "pg.start()\n"
        "print(pg.pid, flush=True)\n"
        "raise SystemExit('exit without stopping')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 5
    while processes.group_members(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes.group_members(pid) == []
