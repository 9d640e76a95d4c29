"""The system accounts database servers run as when the harness runs as root.

PostgreSQL and MariaDB both refuse to run as root; their packages create an account for them
(postgres, mysql), and the harness hands each server's workdir to it.
"""

import os
import pwd
import stat
from pathlib import Path
from typing import Any

from reporting.errors import HarnessError


def hand_workdir_to(account_name: str, workdir: Path, *, service: str, hint: str) -> None:
    """Give the workdir to `account_name` and let it reach the workdir.

    Temporary directories of a root session are mode 0700; the server needs to traverse them, so
    they get the search (x) bit for others, never the read bit.
    """
    try:
        account = pwd.getpwnam(account_name)
    except KeyError:
        raise HarnessError(f"{service}: no '{account_name}' account; run: {hint}") from None
    # The server's own setup (initdb, mariadb-install-db) creates the data directory inside.
    os.chown(workdir, account.pw_uid, account.pw_gid)
    for parent in workdir.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)


def spawn_as(account_name: str) -> dict[str, Any]:
    """subprocess keywords that run a child as `account_name` when the harness is root."""
    if os.geteuid() != 0:
        return {}
    return {"user": account_name, "group": account_name, "extra_groups": []}
