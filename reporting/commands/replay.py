"""`reporting-server replay --config FILE`: drain the journal into the database now, with progress.

For an instance that is stopped (or a journal carried over from another host). It writes with the
fence's current epoch, so a newer active instance still fences it off.
"""

import argparse
import logging
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from reporting.config import Config, LaneSpec, load_config

if TYPE_CHECKING:
    from storage.database import Sink


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("replay", help="drain the journal into the database now")
    parser.add_argument("--config", required=True, help="the instance's TOML file")
    parser.add_argument(
        "--timeout", type=float, default=0.0, help="give up after this many seconds (0: never)"
    )
    parser.set_defaults(func=replay)


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width if total <= 0 else min(width, width * done // total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Progress:
    """The progress line: redrawn in place on a terminal; elsewhere (a log file, systemd's journal)
    a whole line every `every_s` seconds, with no carriage returns to pile up."""

    def __init__(self, stream: TextIO, *, every_s: float = 5.0) -> None:
        self.stream = stream
        self.terminal = stream.isatty()
        self.every_s = every_s
        self._last = float("-inf")

    def show(self, text: str) -> None:
        if self.terminal:
            print(f"\r{text}", end="", file=self.stream, flush=True)
        elif time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            print(text, file=self.stream, flush=True)

    def end(self, text: str) -> None:
        """The last line, after the progress lines (or a message that interrupts them)."""
        print(f"\r{text}" if self.terminal else text, file=self.stream, flush=True)

    def fail(self, text: str) -> None:
        print(f"\n{text}" if self.terminal else text, file=self.stream, flush=True)


def replay(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    started = time.monotonic()
    busy = _live_holder(config, timeout_s=args.timeout) or _other_writer(config)
    if busy:
        print(f"replay: {busy}", file=sys.stderr)
        return 1
    # Not made here: a mistyped journal.dir (or a shared store not mounted) would otherwise read
    # as a journal drained. None at all is an error; in group mode a queue never consumed has
    # none, and is said.
    present = [lane for lane in config.lanes if _journal_at(lane.dir)]
    for lane in config.lanes:
        if lane not in present:
            print(f"replay: no journal at {lane.dir}: nothing to replay", file=sys.stderr)
    if not present:
        return 1
    for lane in present:
        remaining = args.timeout - (time.monotonic() - started) if args.timeout else 0.0
        if args.timeout and remaining <= 0:
            print(f"replay: gave up after {args.timeout:g} s", file=sys.stderr)
            return 1
        if len(config.lanes) > 1:
            print(f"replay: {lane.dir}", file=sys.stderr)
        code = _replay_one(config, lane, timeout_s=remaining)
        if code:
            return code
    return 0


def _journal_at(path: Path) -> bool:
    """Whether something is at `path` (Journal says what is wrong with it if it is no journal)."""
    from storage.errors import JournalError

    try:
        path.lstat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise JournalError(f"journal {path}: cannot look at it: {exc.strerror}") from None
    return True


# Beyond the session timeout, for ZooKeeper to notice a session's end (its ticks).
HOLDER_GRACE_S = 2.0
# How long one look at ZooKeeper may take before it counts as lost.
ANSWER_S = 5.0


def _live_holder(config: Config, *, timeout_s: float = 0.0) -> str | None:
    """Why replay must not run now: an instance holds the role for one of the journals, or
    ZooKeeper cannot tell whether one does.

    An instance stopped a moment ago by kill -9 still holds its nodes until its session expires:
    that long (the session ZooKeeper granted, and a little) is waited out before a holder is
    called live, or `timeout_s` if shorter. Each look at ZooKeeper is bounded: a ZooKeeper lost
    meanwhile is an answer too."""
    if config.ha.mode == "standalone":
        return None
    from kazoo.client import KazooState
    from kazoo.exceptions import (
        ConnectionClosedError,
        ConnectionLoss,
        NoAuthError,
        SessionExpiredError,
    )

    from reporting.ha.acl import no_access
    from reporting.ha.contest import close_client, make_client
    from reporting.ha.holders import journal_holder

    # A look, not a session worth telling about: kazoo's connection lines would bury the answer.
    logging.getLogger("kazoo.client").setLevel(logging.ERROR)
    session = _SessionLog(logging.getLogger("kazoo.client"))
    client = make_client(
        config.ha.zookeeper,
        session_timeout_s=config.ha.session_timeout_s,
        auth=config.ha.auth,
        logger=session,
    )
    unreachable = f"zookeeper {config.ha.zookeeper} cannot be reached to tell who holds the role"
    lost = threading.Event()
    client.add_listener(lambda state: lost.set() if state != KazooState.CONNECTED else None)
    start_s = max(5.0, config.ha.session_timeout_s)
    if timeout_s:
        start_s = min(start_s, timeout_s)
    # Not start(timeout): on a timeout it stops the client itself, waiting on a connection
    # attempt to a dark path for up to ten seconds, whatever --timeout said.
    if not client.start_async().wait(start_s) or not client.connected:
        close_client(client, wait_s=1.0, name=config.name)
        return unreachable
    # ZooKeeper grants at least two of its ticks (4 s with its stock tickTime): a dead holder
    # that asked for the same session_timeout got as long as this client did.
    granted_s = max(config.ha.session_timeout_s, session.granted_ms / 1000)
    wait_s = granted_s + HOLDER_GRACE_S
    if timeout_s:
        wait_s = min(wait_s, timeout_s)

    def held() -> str | None:
        for lane in config.lanes:
            holder = journal_holder(
                client, mode=config.ha.mode, cluster=config.ha.cluster, queue=lane.queues[0]
            )
            if holder:
                return f"{holder} holds the role for the journal {lane.dir}"
        return None

    answers: list[str | None] = []
    failed: list[Exception] = []

    def look() -> None:
        deadline = time.monotonic() + wait_s
        try:
            busy = held()
            while busy and not lost.is_set() and time.monotonic() < deadline:
                lost.wait(0.1)
                busy = held()
        except Exception as exc:  # the session lost or closed under a request, or refused
            failed.append(exc)
            return
        answers.append(busy)

    # On a thread of its own: a request made as the connection drops waits for a reconnect that
    # may never come.
    looker = threading.Thread(target=look, name="replay-holders", daemon=True)
    looker.start()
    looker.join(wait_s + ANSWER_S)
    was_lost = lost.is_set()  # before the close, which ends the session too
    close_client(client, wait_s=1.0, name=config.name)
    if not answers:
        if failed and isinstance(failed[0], NoAuthError):
            return f"zookeeper {config.ha.zookeeper}: {no_access(config.ha.auth)}"
        if was_lost or (
            failed
            and isinstance(failed[0], ConnectionClosedError | ConnectionLoss | SessionExpiredError)
        ):
            return f"zookeeper {config.ha.zookeeper} was lost while telling who holds the role"
        if failed:
            why = f"{type(failed[0]).__name__}: {failed[0]}".rstrip(": ")
            return f"zookeeper {config.ha.zookeeper} cannot tell who holds the role ({why})"
        return (
            f"zookeeper {config.ha.zookeeper} did not answer within {wait_s + ANSWER_S:g} s"
            " who holds the role"
        )
    busy = answers[0]
    if busy is None:
        return None
    stop = "stop it first (or let it drain)"
    if was_lost:
        return f"{busy} (zookeeper {config.ha.zookeeper} lost since); {stop}"
    if timeout_s and timeout_s < granted_s + HOLDER_GRACE_S:
        return f"gave up after {timeout_s:g} s: {busy}; {stop}"
    return f"{busy} (after waiting {wait_s:.1f} s for a stopped instance's session to end); {stop}"


class _SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """kazoo's logger, noting the session timeout ZooKeeper granted: kazoo tells it only in its
    "Session created" line, logged below DEBUG."""

    granted_ms = 0

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith("Session created") and len(args) >= 3:
            granted = args[2]
            if isinstance(granted, int | float):
                self.granted_ms = max(self.granted_ms, int(granted))
        super().log(level, msg, *args, **kwargs)


def _other_writer(config: Config) -> str | None:
    """Why replay must not run now: another instance writes one of the journals (a shared journal
    is written by each instance under its own name; its session may be gone while it lives)."""
    from storage.journal.lock import held_by_others

    for lane in config.lanes:
        for writer, pid in held_by_others(lane.dir, config.name):
            who = f"{writer} (pid {pid})" if pid else writer
            return f"{who} writes the journal {lane.dir}; stop it first (or let it drain)"
    return None


def _fence_epoch(sink: "Sink", started: float, timeout_s: float) -> int | None:
    from storage.errors import DatabaseUnavailable

    warned = False
    while not timeout_s or time.monotonic() - started < timeout_s:
        try:
            sink.upgrade()
            return sink.fence_epoch() or 0
        except DatabaseUnavailable as exc:
            if not warned:
                print(f"replay: database down, retrying ({exc})", file=sys.stderr)
                warned = True
            time.sleep(0.5)
    return None


def _replay_one(config: Config, lane: LaneSpec, *, timeout_s: float) -> int:
    from reporting.commands.run import collect_rarely
    from reporting.pipeline import Drainer, open_journal
    from reporting.status.metrics import Metrics
    from storage.database import Sink

    metrics = Metrics()
    # Written as the instance itself: its journal's writer lock keeps replay and a running
    # instance of the same name apart.
    journal = open_journal(config, lane.dir, epoch=0, metrics=metrics)
    sink = Sink(config.database.url, cluster=lane.fence, journal=lane.key)
    fenced: list[Exception] = []
    done = threading.Event()
    drainer = Drainer(
        lambda: journal,
        sink,
        batch_records=config.database.batch_records,
        metrics=metrics,
        on_fenced=lambda exc: (fenced.append(exc), done.set()),
        on_room=lambda: None,
        name=config.name,
    )
    total = journal.pending.records
    started = time.monotonic()
    progress = Progress(sys.stderr)
    try:
        # The fence's epoch as it is now: an instance that takes the role later raises it, and
        # this replay's next write is refused.
        epoch = _fence_epoch(sink, started, timeout_s)
        if epoch is None:
            progress.fail(f"replay: gave up after {timeout_s:.0f} s")
            return 1
        collect_rarely()
        drainer.start(epoch, claimed=True)
        while not done.is_set():
            if drainer.wait_caught_up(0.5):
                break
            if not drainer.running:
                break
            if timeout_s and time.monotonic() - started > timeout_s:
                progress.fail(f"replay: gave up after {timeout_s:.0f} s")
                return 1
            state = "database down, retrying" if drainer.database_up is False else "draining"
            progress.show(
                f"{_bar(drainer.drained_records, total)} {drainer.drained_records}/{total} "
                f"records ({state})"
            )
    finally:
        drainer.stop()
        journal.close()
        sink.close()
    if fenced:
        progress.fail(f"replay: refused by the fence: {fenced[0]}")
        return 1
    elapsed = time.monotonic() - started
    progress.end(
        f"{_bar(1, 1)} replayed {drainer.drained_records} records "
        f"({drainer.stored} new reports) in {elapsed:.1f} s"
    )
    return 0
