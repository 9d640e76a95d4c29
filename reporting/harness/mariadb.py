"""MariaDB 10.11 from the machine's packages, one server per workdir.

Like the PostgreSQL harness: a data directory of its own (mariadb-install-db), a free 127.0.0.1
port, no option files read (`--no-defaults`, so the system's /etc/mysql never applies), durable
settings, utf8mb4 throughout, and a process group that kill() ends with SIGKILL.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pymysql

from reporting.errors import HarnessError
from reporting.harness import probes
from reporting.harness.accounts import hand_workdir_to, spawn_as
from reporting.harness.ports import LOOPBACK, free_port
from reporting.harness.service import Service

MARIADBD = Path("/usr/sbin/mariadbd")
INSTALL_DB = Path("/usr/bin/mariadb-install-db")
INSTALL_HINT = "scripts/setup (the packages of scripts/packages)"
# mariadbd refuses to run as root; the packages create this account.
RUN_AS = "mysql"
CHARSET = "utf8mb4"
COLLATION = "utf8mb4_unicode_ci"

_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class MariaDB(Service):
    """A MariaDB server on 127.0.0.1 whose root account has no password (loopback only)."""

    name = "mariadb"
    address = LOOPBACK

    def __init__(self, workdir: Path | str, *, port: int | None = None) -> None:
        super().__init__(workdir)
        self.port = port or free_port()
        self.data_dir = self.workdir / "data"
        # The socket file is unused but must not be the system's /run/mysqld.
        self.socket = self.workdir / "mariadb.sock"

    def ports(self) -> dict[str, int]:
        return {"port": self.port}

    def url(self, database: str) -> str:
        """SQLAlchemy URL of a database of this server (PyMySQL, utf8mb4)."""
        return f"mysql+pymysql://root@{self.address}:{self.port}/{database}?charset={CHARSET}"

    def create_database(self, name: str) -> str:
        """Create an empty utf8mb4 database and return its SQLAlchemy URL."""
        if not _DATABASE_NAME.match(name):
            raise HarnessError(f"mariadb: not a plain database name: {name!r}")
        with self.connect() as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET {CHARSET} COLLATE {COLLATION}")
        return self.url(name)

    def connect(self, timeout_s: float = 5) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=self.address,
            port=self.port,
            user="root",
            charset=CHARSET,
            connect_timeout=max(1, int(timeout_s)),
            autocommit=True,
        )

    # -- Service hooks ------------------------------------------------------------------------

    def _prepare(self) -> None:
        for binary in (MARIADBD, INSTALL_DB):
            if not binary.exists():
                raise HarnessError(f"mariadb: {binary} not found; run: {INSTALL_HINT}")
        if os.geteuid() == 0:
            hand_workdir_to(RUN_AS, self.workdir, service=self.name, hint=INSTALL_HINT)
        if not (self.data_dir / "mysql").is_dir():
            self._install_db()

    def _install_db(self) -> None:
        if self.data_dir.exists():
            # A half-done install (killed mid-way) would leave a system schema without tables.
            shutil.rmtree(self.data_dir)
        command = [
            str(INSTALL_DB),
            "--no-defaults",
            f"--datadir={self.data_dir}",
            # root logs in without a password over loopback (the harness's trust auth).
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ]
        with open(self.log_path, "ab") as log_file:
            done = subprocess.run(command, timeout=120, **self._child_options(log_file))
        if done.returncode != 0:
            raise HarnessError(
                f"mariadb: mariadb-install-db failed; log {self.log_path}:\n{self.log_tail(30)}"
            )

    def _command(self) -> list[str]:
        settings = {
            "datadir": str(self.data_dir),
            "bind-address": LOOPBACK,
            "port": str(self.port),
            "socket": str(self.socket),
            "pid-file": str(self.workdir / "mariadb.pid"),
            "skip-name-resolve": None,
            "character-set-server": CHARSET,
            "collation-server": COLLATION,
            # Durability is what the tests check: flush the redo log at every commit.
            "innodb-flush-log-at-trx-commit": "1",
            "innodb-doublewrite": "1",
            "innodb-buffer-pool-size": "32M",
            "innodb-log-file-size": "16M",
            "max-connections": "100",
            # The product's isolation level, stated on the server too (the engine sets it per
            # connection as well).
            "transaction-isolation": "READ-COMMITTED",
            "skip-log-bin": None,
        }
        command = [str(MARIADBD), "--no-defaults"]
        for key, value in settings.items():
            command.append(f"--{key}" if value is None else f"--{key}={value}")
        return command

    def _probe(self) -> bool:
        return probes.mariadb_ready(self.port)

    def _spawn_options(self) -> dict[str, Any]:
        return spawn_as(RUN_AS)
