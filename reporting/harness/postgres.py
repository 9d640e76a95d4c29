"""PostgreSQL 15 from the machine's packages, one cluster per workdir."""

import os
import pwd
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from reporting.errors import HarnessError
from reporting.harness import probes
from reporting.harness.accounts import hand_workdir_to, spawn_as
from reporting.harness.ports import LOOPBACK, free_port
from reporting.harness.service import Service
from reporting.harness.tls import TlsBundle

PG_BIN = Path("/usr/lib/postgresql/15/bin")
INSTALL_HINT = "scripts/setup (the packages of scripts/packages)"
# PostgreSQL refuses to run as root; the packages create this account.
RUN_AS = "postgres"

_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresAccess:
    """Connections and databases of a PostgreSQL server at host:port as the superuser postgres
    (trust auth, or with `password` scram-sha-256)."""

    port: int
    address: str = LOOPBACK
    # The superuser's password; never part of url/url_for, which configs take as they are.
    password: str | None = None

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL of a database of this server."""
        return f"postgresql+psycopg://postgres@{self.address}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        if not _DATABASE_NAME.match(name):
            raise HarnessError(f"postgres: not a plain database name: {name!r}")
        with self.connect() as conn:
            conn.autocommit = True
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def connect(self, database: str = "postgres", timeout_s: float = 5) -> psycopg.Connection:
        return psycopg.connect(
            host=self.address,
            port=self.port,
            user="postgres",
            password=self.password,
            dbname=database,
            connect_timeout=max(1, int(timeout_s)),
        )


class Postgres(PostgresAccess, Service):
    """A PostgreSQL cluster on 127.0.0.1, fsync on, no Unix socket: trust auth, or with
    `password` scram-sha-256 for every role (the superuser postgres has that password). With
    `tls` (a harness CA's bundle) it presents the bundle's server certificate and accepts TLS
    connections only (pg_hba `hostssl`); clients verify it with sslmode=verify-full."""

    name = "postgres"
    # SIGINT is pg_ctl's "fast" shutdown: SIGTERM ("smart") waits for every client to leave.
    graceful_signal = signal.SIGINT

    def __init__(
        self,
        workdir: Path | str,
        *,
        port: int | None = None,
        password: str | None = None,
        tls: TlsBundle | None = None,
    ) -> None:
        super().__init__(workdir)
        self.port = port or free_port()
        self.data_dir = self.workdir / "data"
        self.password = password
        self.tls = tls
        self.tls_dir = self.workdir / "tls"

    def ports(self) -> dict[str, int]:
        return {"port": self.port}

    # -- Service hooks ------------------------------------------------------------------------

    def _prepare(self) -> None:
        if not (PG_BIN / "postgres").exists():
            raise HarnessError(f"postgres: {PG_BIN / 'postgres'} not found; run: {INSTALL_HINT}")
        if os.geteuid() == 0:
            hand_workdir_to(RUN_AS, self.workdir, service=self.name, hint=INSTALL_HINT)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self.tls is not None:
            self._install_tls(self.tls)

    def _initdb(self) -> None:
        if self.data_dir.exists():
            # A half-done initdb (killed mid-way) would refuse to run again.
            shutil.rmtree(self.data_dir)
        command = [
            str(PG_BIN / "initdb"),
            "--pgdata", str(self.data_dir),
            "--username", "postgres",
            "--auth", "trust",
            "--encoding", "UTF8",
            "--locale", "C",
            "--no-instructions",
            # Only initdb's final flush; the server itself runs with fsync on.
            "--no-sync",
        ]  # fmt: skip
        pwfile = self.workdir / "superuser.pw"
        if self.password is not None:
            # pg_hba: scram-sha-256 for every line (127.0.0.1; no Unix socket is opened).
            command += ["--auth", "scram-sha-256", "--pwfile", str(pwfile)]
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            if os.geteuid() == 0:
                account = pwd.getpwnam(RUN_AS)
                os.chown(pwfile, account.pw_uid, account.pw_gid)
        try:
            self._run(command, "initdb")
        finally:
            pwfile.unlink(missing_ok=True)

    def _run(self, command: list[str], what: str, timeout_s: float | None = None) -> None:
        """Run one of PostgreSQL's programs as the server runs, its output into the log."""
        with open(self.log_path, "ab") as log_file:
            done = subprocess.run(command, timeout=timeout_s, **self._child_options(log_file))
        if done.returncode != 0:
            raise HarnessError(
                f"{self.name}: {what} failed; log {self.log_path}:\n{self.log_tail(30)}"
            )

    def _install_tls(self, bundle: TlsBundle) -> None:
        # PostgreSQL refuses a key file that others may read or that another user owns.
        self.tls_dir.mkdir(mode=0o700, exist_ok=True)
        for source, name in ((bundle.cert_file, "server.crt"), (bundle.key_file, "server.key")):
            target = self.tls_dir / name
            target.unlink(missing_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(source.read_bytes())
        # TLS connections only: a plain one matches no line and is refused.
        method = "trust" if self.password is None else "scram-sha-256"
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            f"hostssl all all {LOOPBACK}/32 {method}\n"
            f"hostssl replication all {LOOPBACK}/32 {method}\n"
        )
        if os.geteuid() == 0:
            account = pwd.getpwnam(RUN_AS)
            for path in (self.tls_dir, *self.tls_dir.iterdir(), hba):
                os.chown(path, account.pw_uid, account.pw_gid)

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(self.port),
            "unix_socket_directories": "",
            # Durability is what the tests check; never trade it for speed here.
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "shared_buffers": "16MB",
            "max_connections": "100",
            "log_min_messages": "warning",
            "password_encryption": "scram-sha-256",
        }
        if self.tls is not None:
            settings["ssl"] = "on"
            settings["ssl_cert_file"] = str(self.tls_dir / "server.crt")
            settings["ssl_key_file"] = str(self.tls_dir / "server.key")
        command = [str(PG_BIN / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        return command

    def _probe(self) -> bool:
        return probes.postgres_ready(self.port, password=self.password)

    def _spawn_options(self) -> dict[str, Any]:
        return spawn_as(RUN_AS)
