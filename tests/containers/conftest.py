"""Container-backed tests: the project's images on a Docker engine (`scripts/containers up`).

Kept out of the default run (marker `containers`); `scripts/containers test` runs them. Where no
engine answers (no docker command, no permission, no overlay) every test here is skipped with
the reason; images missing on an engine that answers are an error (`scripts/containers build`).
"""

from collections.abc import Iterator

import pytest

from reporting.harness import containers
from tests.conftest import skip_without_engine


@pytest.fixture(scope="session")
def engine() -> None:
    """Skips the test when no Docker engine answers; fails it when the images are missing."""
    skip_without_engine()
    missing = containers.missing_images()
    if missing:
        pytest.fail(f"images missing: {', '.join(missing)}; run: scripts/containers build")


def _serve(service: containers.ContainerService) -> Iterator[containers.ContainerService]:
    service.start(timeout_s=180)
    yield service
    service.remove()


@pytest.fixture(scope="session")
def c_postgres(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    yield from _serve(containers.PostgresContainer(tmp_path_factory.mktemp("c-postgres")))


@pytest.fixture(scope="session")
def c_activemq(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    yield from _serve(containers.ActiveMQContainer(tmp_path_factory.mktemp("c-activemq")))


@pytest.fixture(scope="session")
def c_zookeeper(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    yield from _serve(containers.ZooKeeperContainer(tmp_path_factory.mktemp("c-zookeeper")))


@pytest.fixture(autouse=True)
def _heal(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test may kill or pause a session server; the next one finds it running again."""
    yield
    for name in ("c_postgres", "c_activemq", "c_zookeeper"):
        if name in request.fixturenames:
            service = request.getfixturevalue(name)
            if service.is_paused():
                service.resume()
            if not service.is_running():
                service.start(timeout_s=180)
