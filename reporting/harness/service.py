"""Service: one local server process in its own workdir, with the faults tests inject into it.

Each server runs as the leader of its own process group; signals go to the whole group so that
children (PostgreSQL backends) share the fate of the server. Every started service is registered
and stopped at interpreter exit unless detach() hands it over to a later process (`stack down`).
"""

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any, Protocol, Self

from reporting.errors import HarnessError
from reporting.harness import processes

log = logging.getLogger(__name__)

# Between two readiness probes; the probe itself decides readiness, this only paces it.
PROBE_INTERVAL_S = 0.1


class Service:
    """Base of the harness servers. Subclasses fill in _prepare, _command and _probe."""

    name: str = "service"
    # The signal that asks the server for a clean shutdown.
    graceful_signal: signal.Signals = signal.SIGTERM

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.pid: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None

    # -- hooks --------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Write configuration and initialise data; runs before every start, so idempotent."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """True once the server answers its own protocol."""
        raise NotImplementedError

    def _spawn_options(self) -> dict[str, Any]:
        """Extra subprocess.Popen keywords (user, env)."""
        return {}

    def _child_options(self, log_file: IO[bytes]) -> dict[str, Any]:
        """How a process of this service runs: in its workdir, as its user, into its log."""
        return {
            "stdin": subprocess.DEVNULL,
            "stdout": log_file,
            "stderr": subprocess.STDOUT,
            "cwd": self.workdir,
            **self._spawn_options(),
        }

    def ports(self) -> dict[str, int]:
        """The ports this service listens on, by name (kept across restarts)."""
        return {}

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout_s: float = 90) -> None:
        """Spawn the server and return once it answers its protocol."""
        if self.is_running():
            raise HarnessError(f"{self.name}: already running (pid {self.pid})")
        self._prepare()
        command = self._command()
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"--- harness: starting {' '.join(command)}\n".encode())
            log_file.flush()
            try:
                self._popen = subprocess.Popen(
                    command, start_new_session=True, **self._child_options(log_file)
                )
            except FileNotFoundError as exc:
                raise HarnessError(f"{self.name}: cannot run {command[0]}: {exc}") from None
        self.pid = self._popen.pid
        processes.record_spawn(self.pid)
        processes.register(id(self), self._stop_at_exit)
        log.info("%s: started pid %s, log %s", self.name, self.pid, self.log_path)
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.is_running():
                code = self._popen.returncode if self._popen else None
                self._forget()
                raise HarnessError(
                    f"{self.name}: exited (code {code}) while starting; "
                    f"log {self.log_path}:\n{self.log_tail(40)}"
                )
            if self._probe():
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise HarnessError(
                    f"{self.name}: not ready after {timeout_s:.0f} s; "
                    f"log {self.log_path}:\n{self.log_tail(40)}"
                )
            time.sleep(PROBE_INTERVAL_S)

    def stop(self, timeout_s: float = 30) -> None:
        """Ask for a clean shutdown; SIGKILL the group if it has not ended within timeout_s."""
        if self.pid is None:
            return
        pgid = self.pid
        if self.is_running():
            # A stopped process cannot act on the shutdown signal.
            processes.signal_group(pgid, signal.SIGCONT)
            try:
                os.kill(pgid, self.graceful_signal)
            except ProcessLookupError:
                pass
            if not processes.wait_group_gone(pgid, timeout_s):
                log.warning("%s: no clean stop within %.0f s, killing", self.name, timeout_s)
        # Also takes any child the leader left behind.
        processes.kill_group(pgid)
        self._reap(5)
        self._forget()

    def __enter__(self) -> Self:
        """Started for a `with` block (a fixture's life), stopped at its end."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def kill(self) -> None:
        """SIGKILL the server and its children; return once all of them are gone."""
        if self.pid is None:
            return
        processes.kill_group(self.pid)
        self._reap(5)
        self._forget()

    def pause(self) -> None:
        """SIGSTOP the server: its sockets stay open, it answers nothing."""
        self._require_running()
        processes.signal_group(self.pid, signal.SIGSTOP)
        # Delivery is asynchronous; callers expect the server frozen once this returns.
        deadline = time.monotonic() + 5
        while not processes.is_stopped(self.pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def resume(self) -> None:
        self._require_running()
        processes.signal_group(self.pid, signal.SIGCONT)

    def restart(self, timeout_s: float = 90) -> None:
        """Start again on the same ports and data; stops the server first if it runs."""
        self.stop()
        self.start(timeout_s)

    def is_running(self) -> bool:
        if self.pid is None:
            return False
        if self._popen is not None and self._popen.poll() is not None:
            return False
        return processes.is_alive(self.pid)

    def is_paused(self) -> bool:
        return self.pid is not None and processes.is_stopped(self.pid)

    def log_tail(self, lines: int = 200) -> str:
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(0, os.SEEK_END)
                # Enough bytes for the requested lines of a typical server log.
                log_file.seek(max(0, log_file.tell() - lines * 400))
                text = log_file.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- handing over between processes (`stack up` / `stack down`) ---------------------------

    def state(self) -> dict[str, Any]:
        return {"workdir": str(self.workdir), "pid": self.pid, "ports": self.ports()}

    def adopt(self, pid: int | None) -> None:
        """Take over a server an earlier process started, if pid is still that server."""
        # A pid is reused once its process is gone; the workdir in the command line tells ours.
        if pid is not None and str(self.workdir) in processes.command_line(pid):
            self.pid = pid
            processes.register(id(self), self._stop_at_exit)

    def detach(self) -> None:
        """Leave the server running when this interpreter exits."""
        processes.unregister(id(self))

    def remove(self) -> None:
        """Delete what the engine keeps of a stopped server: nothing for a process (a container
        overrides it). Its workdir and log stay."""

    # -- internals ----------------------------------------------------------------------------

    def _require_running(self) -> None:
        if not self.is_running():
            raise HarnessError(f"{self.name}: not running")

    def _reap(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.is_running() and time.monotonic() < deadline:
            if self._popen is not None:
                try:
                    self._popen.wait(timeout=min(0.2, timeout_s))
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.05)

    def _forget(self) -> None:
        if self._popen is not None:
            self._popen.poll()
        self._popen = None
        self.pid = None
        processes.unregister(id(self))

    def _stop_at_exit(self) -> None:
        self.stop(timeout_s=10)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} {self.ports()}>"


class DatabaseServer(Protocol):
    """What a pair and its tests need of a database server, which Postgres and MariaDB (and
    their container twins) both are: a fresh database, its port for a proxy in front of it,
    and the faults."""

    name: str
    port: int

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        ...

    def kill(self) -> None: ...

    def restart(self, timeout_s: float = 90) -> None: ...
