"""`reporting-server check-config --config FILE [--local]`: what `run` checks before it starts,
one line each, `ok` or `failed: reason`; exit 0 only if every check passed, else 1.

The checks: the file, its secrets, the journal directory (private, writable, room for
journal.max_bytes, no other process with this name on it), the broker login, ZooKeeper (reachable,
and every node of the pair readable with the pair's credentials and the pair's own), the database
(reachable, schema not newer than this version knows). `--local` leaves out the three servers:
for systemd's ExecStartPre, so that a database or broker outage, which `run` waits out, does not
keep an instance from starting.
"""

import argparse
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from reporting.config import Config, load_config
from reporting.errors import ReportingError
from storage.errors import StorageError

# How long each server may take to answer.
TIMEOUT_S = 5.0


class Failed(Exception):
    """A check's reason for failing."""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("check-config", help="check an instance's config and what it names")
    parser.add_argument("--config", required=True, help="the instance's TOML file")
    parser.add_argument(
        "--local", action="store_true", help="only the file, its secrets and the journal directory"
    )
    parser.set_defaults(func=check_config)


def check_config(args: argparse.Namespace) -> int:
    from reporting import logs

    # Each check says in its own line what went wrong; the clients' retry warnings would repeat it.
    for library in ("stomp", "stomp.py", "kazoo"):
        logging.getLogger(library).setLevel(logging.CRITICAL)

    def report(what: str, check: Callable[[], str]) -> bool:
        try:
            detail = check()
        except (Failed, ReportingError, StorageError, OSError) as exc:
            print(f"{what}: failed: {logs.redact(str(exc))}", flush=True)
            return False
        print(f"{what}: ok" + (f" ({detail})" if detail else ""), flush=True)
        return True

    path = args.config
    if not report(f"config {path}", lambda: _file(path)):
        return 1
    loaded: list[Config] = []
    if not report("secrets", lambda: _secrets(path, loaded)):
        return 1
    (config,) = loaded
    passed = report(f"journal {config.journal.dir}", lambda: _journal(config))
    if not args.local:
        passed &= report("broker", lambda: _broker(config))
        passed &= report("zookeeper", lambda: _zookeeper(config))
        passed &= report("database", lambda: _database(config))
    return 0 if passed else 1


def _file(path: str) -> str:
    config = load_config(path, secrets=False)
    return f"{config.name}, {config.ha.mode} mode"


def _secrets(path: str, loaded: list[Config]) -> str:
    config = load_config(path)
    loaded.append(config)
    given = [
        part
        for part, secret in (
            ("broker", config.broker.password),
            ("zookeeper", config.ha.password),
            ("database", _database_password(config.database.url)),
        )
        if secret is not None
    ]
    return f"{', '.join(given)} password read" if given else "none configured"


def _database_password(url: str) -> str | None:
    from sqlalchemy import make_url

    return make_url(url).password


def _journal(config: Config) -> str:
    from storage.errors import JournalLocked
    from storage.journal.lock import WriterLock

    directory = config.journal.dir
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if existing != directory:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise Failed(f"does not exist, and {existing} is not writable to create it")
        detail = "run creates it"
    else:
        if not directory.is_dir():
            raise Failed("not a directory")
        mode = directory.stat().st_mode & 0o777
        if mode & 0o077:
            raise Failed(f"open to group or others (mode {mode:03o}); chmod 700 it")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise Failed("not writable by this user")
        detail = "private, writable"
    free = shutil.disk_usage(existing).free
    if free < config.journal.max_bytes:
        raise Failed(
            f"{_size(free)} free on its file system, less than journal.max_bytes "
            f"({_size(config.journal.max_bytes)}): the disk would fill before the journal's limit"
        )
    if existing == directory:
        for lane in config.lanes:
            if lane.dir.is_dir():
                # Taken and let go at once: refused only while a process with this name runs.
                try:
                    WriterLock(lane.dir, config.name).release()
                except JournalLocked as exc:
                    raise Failed(str(exc)) from None
    return f"{detail}, {_size(free)} free"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def _broker(config: Config) -> str:
    from reporting.wire.consumer import check_login

    if not check_login(config.broker, timeout_s=TIMEOUT_S):
        hosts = ", ".join(map(str, config.broker.hosts))
        raise Failed(f"no broker of {hosts} answered within {TIMEOUT_S:g} s")
    login = f"user {config.broker.user!r}" if config.broker.user else "no login"
    return f"{login}{', TLS verified' if config.broker.tls else ''}"


def _zookeeper(config: Config) -> str:
    from kazoo.exceptions import KazooException

    from reporting.ha import make_election
    from reporting.ha.group import GroupElection

    if config.ha.mode == "standalone":
        return "not used in standalone mode"
    ha = config.ha
    common = dict(
        name=config.name,
        zookeeper=ha.zookeeper,
        cluster=ha.cluster,
        session_timeout_s=ha.session_timeout_s,
        auth=ha.auth,
    )
    if ha.mode == "group":
        election = GroupElection(queues=config.broker.queues, on_change=lambda *_: None, **common)
    else:
        election = make_election(
            mode=ha.mode,
            role=ha.role,
            grace_s=ha.grace_s,
            healthy=lambda: True,
            on_change=lambda _: None,
            **common,
        )
    try:
        election.check_access(TIMEOUT_S)
    except KazooException as exc:
        raise Failed(f"zookeeper {ha.zookeeper}: {type(exc).__name__}") from None
    who = f"as user {ha.auth[0]!r}" if ha.auth else "without credentials"
    return f"{ha.cluster} {who}"


def _database(config: Config) -> str:
    from sqlalchemy import make_url

    from storage.database.engine import dialect_of, make_engine, translated
    from storage.database.migrate import current, head

    url = config.database.url
    if dialect_of(url) == "sqlite":
        database = make_url(url).database
        if database and database != ":memory:" and not Path(database).exists():
            return "no database file yet; run creates it"
    engine = make_engine(url, timeout_s=TIMEOUT_S)
    try:
        with translated(url), engine.connect() as conn:
            revision = current(conn)
    finally:
        engine.dispose()
    newest = head()
    if revision == newest:
        return f"schema {revision}, the newest"
    if revision is None:
        return "no schema yet; run creates it"
    from alembic.script import ScriptDirectory

    from storage.database.migrate import alembic_config

    known = {r.revision for r in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if revision not in known:
        raise Failed(f"schema {revision} is newer than this version knows (up to {newest})")
    return f"schema {revision}; run upgrades it to {newest}"
