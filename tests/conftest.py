"""Session-wide harness servers: one PostgreSQL, ActiveMQ and ZooKeeper per pytest session.

Each server starts the first time a test asks for it. A test may kill, stop or pause a shared
server; after every test the servers are brought back (resumed, restarted on the same ports and
data) so the next test finds them as the session started them. On a failure the tail of each
server's log is attached to the report. At the end every server is stopped and the session fails
if any harness process is still alive.
"""

import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reporting.harness import ActiveMQ, Postgres, Service, TcpProxy, ZooKeeper, processes

# Servers started in this session, in start order.
_servers: list[Service] = []
_session_dir: list[Path] = []


@pytest.fixture(scope="session")
def harness_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this session holding every harness server's workdir and log."""
    path = tmp_path_factory.mktemp("harness")
    _session_dir.append(path)
    return path


def _serve(server: Service) -> Iterator[Service]:
    _servers.append(server)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(harness_dir: Path) -> Iterator[Postgres]:
    yield from _serve(Postgres(harness_dir / "postgres"))


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """SQLAlchemy URL of a fresh, empty database for this test."""
    return postgres.create_database(f"t_{uuid.uuid4().hex}")


@pytest.fixture(scope="session")
def activemq(harness_dir: Path) -> Iterator[ActiveMQ]:
    yield from _serve(ActiveMQ(harness_dir / "activemq"))


@pytest.fixture(scope="session")
def zookeeper(harness_dir: Path) -> Iterator[ZooKeeper]:
    yield from _serve(ZooKeeper(harness_dir / "zookeeper"))


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], TcpProxy]]:
    """Factory: tcp_proxy(host, port) -> a started TcpProxy, stopped when the test ends."""
    proxies: list[TcpProxy] = []

    def start(target_host: str, target_port: int) -> TcpProxy:
        proxy = TcpProxy(target_host, target_port).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    result = yield
    _heal_servers()
    return result


def _heal_servers() -> None:
    for server in _servers:
        if server.is_paused():
            server.resume()
        if not server.is_running():
            server.restart()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    report = yield
    if report.failed:
        for server in _servers:
            report.sections.append((f"{server.name} log ({server.log_path})", server.log_tail(60)))
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for server in _servers:
        server.stop()
    processes.stop_registered()
    left = _leftover_processes()
    if left:
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        lines = "\n".join(f"  {pid}: {cmd}" for pid, cmd in left.items())
        session.config.get_terminal_writer().line(
            f"\nHARNESS PROCESSES LEFT RUNNING AFTER THE SESSION (killed now):\n{lines}", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _leftover_processes() -> dict[int, str]:
    """Live processes of the groups this session started, or naming its harness directory."""
    left = {
        pid: processes.command_line(pid)
        for pgid in processes.spawned_groups()
        for pid in processes.group_members(pgid)
    }
    if not _session_dir:
        return left
    marker = str(_session_dir[0])
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and processes.is_alive(int(entry.name)):
            command = processes.command_line(int(entry.name))
            if marker in command:
                left[int(entry.name)] = command
    return left
