"""A PostgreSQL primary and a streaming standby made with `pg_basebackup -R`.

Synchronous: the primary acknowledges a commit only once the standby has flushed it
(`synchronous_standby_names`, `synchronous_commit = on`), so a promoted standby holds every
commit a client saw. Asynchronous: the standby may lag, and a promotion loses what it had not
received. The standby is promoted with `pg_ctl promote`; a multi-host URL with
`target_session_attrs=read-write` lets a client find whichever of the two accepts writes.
"""

import os
import shutil
import time
from pathlib import Path

import psycopg

from reporting.errors import HarnessError
from reporting.harness.accounts import hand_workdir_to
from reporting.harness.ports import LOOPBACK
from reporting.harness.postgres import INSTALL_HINT, PG_BIN, RUN_AS, Postgres

_REPLICATION_HBA = f"host replication postgres {LOOPBACK}/32 trust\n"
STANDBY_NAME = "standby"


class ReplicationPrimary(Postgres):
    """The existing cluster with WAL senders on, a replication line in pg_hba and, when
    `synchronous`, commits that wait for the standby's flush."""

    name = "postgres-primary"

    def __init__(self, workdir: Path | str, *, synchronous: bool) -> None:
        super().__init__(workdir)
        self.synchronous = synchronous

    def _prepare(self) -> None:
        super()._prepare()
        hba = self.data_dir / "pg_hba.conf"
        if _REPLICATION_HBA not in hba.read_text():
            with open(hba, "a") as conf:
                conf.write(_REPLICATION_HBA)

    def _command(self) -> list[str]:
        settings = {
            "wal_level": "replica",
            "max_wal_senders": "5",
            "hot_standby": "on",
            # A standby that falls briefly behind can catch up from here, not from a new backup.
            "wal_keep_size": "256MB",
            "synchronous_standby_names": STANDBY_NAME if self.synchronous else "",
        }
        command = super()._command()
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        return command


class Standby(Postgres):
    """A hot standby of `primary`, streaming from it; its first start takes the base backup."""

    name = "postgres-standby"

    def __init__(self, workdir: Path | str, *, primary: Postgres) -> None:
        super().__init__(workdir)
        self.primary = primary

    def _prepare(self) -> None:
        if not (PG_BIN / "pg_basebackup").exists():
            raise HarnessError(f"{self.name}: {PG_BIN / 'pg_basebackup'} not found; {INSTALL_HINT}")
        if os.geteuid() == 0:
            hand_workdir_to(RUN_AS, self.workdir, service=self.name, hint=INSTALL_HINT)
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self.data_dir.exists():
            # A half-done backup (killed mid-way) would refuse to run again.
            shutil.rmtree(self.data_dir)
        conninfo = (
            f"host={LOOPBACK} port={self.primary.port} user=postgres "
            f"application_name={STANDBY_NAME}"
        )
        command = [
            str(PG_BIN / "pg_basebackup"),
            "--pgdata", str(self.data_dir),
            "--dbname", conninfo,
            # standby.signal and primary_conninfo (with the application_name above)
            "--write-recovery-conf",
            "--wal-method", "stream",
            "--checkpoint", "fast",
            "--no-sync",
        ]  # fmt: skip
        self._run(command, "pg_basebackup", timeout_s=120)

    def promote(self, timeout_s: float = 30) -> None:
        """`pg_ctl promote`; return once the server accepts writes."""
        self._require_running()
        command = [str(PG_BIN / "pg_ctl"), "promote", "--pgdata", str(self.data_dir), "--no-wait"]
        self._run(command, "pg_ctl promote", timeout_s=120)
        deadline = time.monotonic() + timeout_s
        while not self.accepts_writes():
            if time.monotonic() >= deadline:
                raise HarnessError(f"{self.name}: not writable {timeout_s:.0f} s after promote")
            time.sleep(0.05)

    def accepts_writes(self) -> bool:
        try:
            with self.connect(timeout_s=2) as conn:
                return conn.execute("SHOW transaction_read_only").fetchone() == ("off",)
        except psycopg.OperationalError:
            return False


class PostgresPair:
    """A primary and its streaming standby, in `workdir`/primary and `workdir`/standby."""

    def __init__(self, workdir: Path | str, *, synchronous: bool) -> None:
        workdir = Path(workdir)
        self.synchronous = synchronous
        self.primary = ReplicationPrimary(workdir / "primary", synchronous=synchronous)
        self.standby = Standby(workdir / "standby", primary=self.primary)

    def start(self, timeout_s: float = 90) -> None:
        """Start both; return once the standby streams (and, synchronous, is the sync one)."""
        if not self.primary.is_running():
            self.primary.start(timeout_s)
        if not self.standby.is_running():
            self.standby.start(timeout_s)
        deadline = time.monotonic() + timeout_s
        while not self.streaming():
            if time.monotonic() >= deadline:
                raise HarnessError(
                    f"postgres pair: standby not streaming after {timeout_s:.0f} s; "
                    f"log {self.standby.log_path}:\n{self.standby.log_tail(30)}"
                )
            time.sleep(0.1)

    def streaming(self) -> bool:
        """True when the primary sees the standby streaming, as its sync standby if synchronous."""
        wanted = "sync" if self.synchronous else "async"
        try:
            with self.primary.connect(timeout_s=2) as conn:
                rows = conn.execute(
                    "SELECT sync_state FROM pg_stat_replication"
                    " WHERE application_name = %s AND state = 'streaming'",
                    (STANDBY_NAME,),
                ).fetchall()
        except psycopg.OperationalError:
            return False
        return (wanted,) in rows

    def stop(self) -> None:
        # The standby first: a synchronous primary's shutdown does not wait for it anyway.
        self.standby.stop()
        self.primary.stop()

    def promote(self, timeout_s: float = 30) -> None:
        self.standby.promote(timeout_s)

    def create_database(self, name: str) -> str:
        """Create it on the primary (the standby replays it) and return its multi-host URL."""
        self.primary.create_database(name)
        return self.multi_host_url(name)

    def __enter__(self) -> "PostgresPair":
        """Started for a `with` block (a fixture's life), stopped at its end."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def multi_host_url(self, database: str) -> str:
        """SQLAlchemy URL naming both servers; psycopg connects to the one that takes writes."""
        hosts = "&".join(
            f"host={LOOPBACK}:{server.port}" for server in (self.primary, self.standby)
        )
        return f"postgresql+psycopg://postgres@/{database}?{hosts}&target_session_attrs=read-write"
