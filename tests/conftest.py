"""Session-wide harness servers: one PostgreSQL, MariaDB, ActiveMQ and ZooKeeper per pytest
session.

Each server starts the first time a test asks for it: a local process, or with
REPORTING_TEST_BACKEND=containers a container of the project's images
(reporting.harness.containers). A test may kill, stop or pause a shared server; after every test
the servers are brought back (resumed, restarted on the same ports and data) so the next test
finds them as the session started them. On a failure the tail of each server's log is attached
to the report. At the end every server is stopped and the session fails if any harness process
or container is still alive (containers are removed).
"""

import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from reporting.errors import HarnessError
from reporting.harness import ActiveMQ, MariaDB, Postgres, Service, TcpProxy, ZooKeeper, processes
from reporting.harness.instance import Instance
from reporting.harness.service import DatabaseServer

# Servers started in this session, in start order.
_servers: list[Service] = []
# What a test started of its own (server instances, a second broker), whose logs a failure shows:
# each fixture adds its list, which the test may still add to.
TEST_LOGS = pytest.StashKey[list[Sequence[Service]]]()
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


def skip_without_engine() -> None:
    """Skips the test, with the reason, when no Docker engine answers."""
    from reporting.harness import containers

    reason = os.environ.get("REPORTING_CONTAINERS_UNAVAILABLE")
    if reason:
        pytest.skip(reason)
    try:
        containers.docker_client().close()
    except HarnessError as exc:
        pytest.skip(str(exc))


def _server_class(local: type, container: str) -> type:
    """The local class, or with REPORTING_TEST_BACKEND=containers its container twin (the test is
    skipped with the reason when no Docker engine answers)."""
    backend = os.environ.get("REPORTING_TEST_BACKEND", "local")
    if backend == "local":
        return local
    from reporting.harness import containers

    if containers.select_backend(backend) != "containers":
        return local
    skip_without_engine()
    return getattr(containers, container)


@pytest.fixture(scope="session")
def postgres(harness_dir: Path) -> Iterator[Postgres]:
    yield from _serve(_server_class(Postgres, "PostgresContainer")(harness_dir / "postgres"))


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """SQLAlchemy URL of a fresh, empty database for this test."""
    return postgres.create_database(f"t_{uuid.uuid4().hex}")


@pytest.fixture(scope="session")
def mariadb(harness_dir: Path) -> Iterator[MariaDB]:
    yield from _serve(MariaDB(harness_dir / "mariadb"))


@pytest.fixture
def maria_url(mariadb: MariaDB) -> str:
    """SQLAlchemy URL of a fresh, empty MariaDB database for this test."""
    return mariadb.create_database(f"t_{uuid.uuid4().hex}")


# The databases a test's instances can store into: the fixture of each one's server, and of a
# fresh, empty database on it.
DATABASES = {"postgresql": ("postgres", "pg_url"), "mariadb": ("mariadb", "maria_url")}


def on_databases(*, mariadb_marks: object = ()) -> pytest.MarkDecorator:
    """Runs a test once per database of DATABASES (the `database` and `db_url` fixtures, and the
    instances of `standalone` and the pair builders); `mariadb_marks` mark the MariaDB run."""
    return pytest.mark.parametrize(
        "database_name",
        ["postgresql", pytest.param("mariadb", marks=mariadb_marks)],
        indirect=True,
    )


@pytest.fixture
def database_name(request: pytest.FixtureRequest) -> str:
    """The database of this test: "postgresql" unless the test is run `on_databases`."""
    return getattr(request, "param", "postgresql")


@pytest.fixture
def database(database_name: str, request: pytest.FixtureRequest) -> DatabaseServer:
    """The session's server of `database_name`."""
    return request.getfixturevalue(DATABASES[database_name][0])


@pytest.fixture
def db_url(database_name: str, request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL of a fresh, empty database of `database_name` for this test (the same as
    `pg_url` on PostgreSQL)."""
    return request.getfixturevalue(DATABASES[database_name][1])


@pytest.fixture(scope="session")
def activemq(harness_dir: Path) -> Iterator[ActiveMQ]:
    yield from _serve(_server_class(ActiveMQ, "ActiveMQContainer")(harness_dir / "activemq"))


@pytest.fixture(scope="session")
def zookeeper(harness_dir: Path) -> Iterator[ZooKeeper]:
    yield from _serve(_server_class(ZooKeeper, "ZooKeeperContainer")(harness_dir / "zookeeper"))


@pytest.fixture
def backup_broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ActiveMQ]:
    """A second ActiveMQ of this test only, the segregated backup's own store."""
    broker = _server_class(ActiveMQ, "ActiveMQContainer")(tmp_path / "backup-activemq")
    request.node.stash.setdefault(TEST_LOGS, []).append([broker])
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        broker.remove()


@pytest.fixture(scope="session")
def instance_class() -> type[Instance]:
    """What runs the server instances of the tests that take it (the chaos runs): local
    processes, or with REPORTING_TEST_BACKEND=containers containers of the server image."""
    return _server_class(Instance, "InstanceContainer")


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
        for service in (
            service for started in item.stash.get(TEST_LOGS, []) for service in started
        ):
            try:
                tail = service.log_tail(60)
            except (OSError, HarnessError) as exc:
                tail = f"(no log: {exc})"
            report.sections.append((f"{service.name} log ({service.log_path})", tail))
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for server in _servers:
        server.stop()
        server.remove()
    processes.stop_registered()
    left = _leftover_processes()
    left_containers = _leftover_containers()
    if left_containers:
        session.config.get_terminal_writer().line(
            "\nCONTAINERS LEFT AFTER THE SESSION (removed now): " + ", ".join(left_containers),
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if left:
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        lines = "\n".join(f"  {pid}: {cmd}" for pid, cmd in left.items())
        session.config.get_terminal_writer().line(
            f"\nHARNESS PROCESSES LEFT RUNNING AFTER THE SESSION (killed now):\n{lines}", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _leftover_containers() -> list[str]:
    """Containers this session made (harness servers, compose stacks) that still exist; removed."""
    containers = sys.modules.get("reporting.harness.containers")
    if containers is None:
        return []
    stacks = sys.modules.get("tests.containers.compose_stack")
    projects = list(stacks.PROJECTS) if stacks else []
    try:
        return containers.remove_leftovers(containers.OWNER, projects)
    except HarnessError:
        return []  # the engine is gone, and its containers with it


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
