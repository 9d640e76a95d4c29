"""Process groups of harness servers: signals, liveness, and the registry emptied at exit.

Every server runs in its own session (process group), so a signal to the group reaches the server
and every child it forked (PostgreSQL backends, JVM helpers) and nothing else.
"""

import atexit
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_lock = threading.Lock()
# Stop callbacks of every live harness service, keyed by id(service): emptied at interpreter exit.
_registry: dict[int, Callable[[], None]] = {}
# Every process group this interpreter started, live or not: what a leak check looks at.
_spawned: list[int] = []


def register(key: int, stop: Callable[[], None]) -> None:
    with _lock:
        _registry[key] = stop


def record_spawn(pgid: int) -> None:
    with _lock:
        _spawned.append(pgid)


def spawned_groups() -> list[int]:
    with _lock:
        return list(_spawned)


def unregister(key: int) -> None:
    with _lock:
        _registry.pop(key, None)


def stop_registered() -> None:
    """Stop every registered service; each failure is logged and the rest still stop."""
    with _lock:
        stops = list(_registry.values())
    for stop in stops:
        try:
            stop()
        except Exception:  # one broken server must not keep the others running
            log.exception("harness: stopping a service at exit failed")


atexit.register(stop_registered)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time pid has used so far (0 once it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # utime and stime, fields 14 and 15 of stat(5), in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def is_alive(pid: int) -> bool:
    """True when pid exists and is not a zombie (a zombie has exited; only its parent's
    wait() is missing)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def is_stopped(pid: int) -> bool:
    """True when pid is stopped by a signal (SIGSTOP)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] in ("T", "t")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group pgid."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        # After the command name: state, ppid, pgrp.
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Wait until no live process of the group is left; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def kill_group(pgid: int, timeout_s: float = 30) -> None:
    """SIGKILL the whole group and wait until every member is gone."""
    signal_group(pgid, signal.SIGKILL)
    if not wait_group_gone(pgid, timeout_s):
        raise TimeoutError(f"process group {pgid} still alive after SIGKILL")


def command_line(pid: int) -> str:
    """The command line of pid with spaces between arguments, or '' if it is gone."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""
