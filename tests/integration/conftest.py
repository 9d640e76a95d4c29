"""Fixtures for tests that run server instances against the session's harness servers.

Each test gets its own queue names (a prefix before `gvp.reporting.<kind>`), its own database and
its own journal directory, so tests sharing one ActiveMQ and one PostgreSQL cannot see each
other's reports.
"""

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from reporting.harness.activemq import PRODUCER, SERVER, ActiveMQ
from reporting.harness.flow import Flow
from reporting.harness.group import Group, spread
from reporting.harness.instance import TEST_SETTINGS, Instance, instance_config, merge
from reporting.harness.pair import Pair, build_pair
from reporting.harness.postgres import Postgres
from reporting.harness.tls import TlsBundle, make_ca
from reporting.harness.waiting import wait_until
from storage.reports import KINDS
from tests.conftest import TEST_LOGS


@pytest.fixture
def queue_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def queues(queue_prefix: str) -> list[str]:
    return [f"{queue_prefix}gvp.reporting.{kind}" for kind in KINDS]


@pytest.fixture
def ca(tmp_path: Path) -> TlsBundle:
    """A CA and a server certificate for the test's TLS servers."""
    return make_ca(tmp_path / "ca", name="test")


@pytest.fixture
def other_ca(tmp_path: Path) -> TlsBundle:
    """A CA that signed none of the test's servers."""
    return make_ca(tmp_path / "other-ca", name="other")


def secure_activemq(workdir: Path, *, server_pw: str, producer_pw: str) -> ActiveMQ:
    """A broker with authorization: user `reporting` may consume, user `producer` send."""
    users = {"reporting": (server_pw, SERVER), "producer": (producer_pw, PRODUCER)}
    return ActiveMQ(workdir, users=users)


# The superuser's password of `secure_postgres`.
POSTGRES_SUPER_PW = "su-Pw-0b3f"


@pytest.fixture
def secure_postgres(tmp_path: Path) -> Iterator[Postgres]:
    """A PostgreSQL of its own whose roles log in with scram-sha-256 passwords."""
    with Postgres(tmp_path / "secure-postgres", password=POSTGRES_SUPER_PW) as server:
        yield server


@pytest.fixture
def instances(request: pytest.FixtureRequest) -> Iterator[list[Instance]]:
    """Instances a test started; each is stopped (killed if it hangs) after the test, and its
    container removed if it ran in one. A failed test's report shows their logs' tails."""
    started: list[Instance] = []
    request.node.stash.setdefault(TEST_LOGS, []).append(started)
    yield started
    for instance in started:
        instance.stop(timeout_s=15)
        instance.remove()


@pytest.fixture
def standalone(
    tmp_path: Path, activemq: Any, db_url: str, queues: list[str], instances: list[Instance]
) -> Callable[..., Instance]:
    """Builds (not starts) a standalone instance on the session's broker and a fresh database
    (`db_url`)."""

    def make(name: str = "rs-solo", **overrides: dict[str, Any]) -> Instance:
        config = instance_config(
            name,
            ha={"mode": "standalone"},
            hosts=[activemq.host],
            queues=queues,
            db_url=db_url,
            journal_dir=tmp_path / name / "journal",
            settings=TEST_SETTINGS,
        )
        instance = Instance(tmp_path / name, merge(config, overrides))
        instances.append(instance)
        return instance

    return make


def nothing_stranded(pair: Pair) -> None:
    """Nothing left in any queue of the pair's brokers, nor undrained in its journals."""
    wait_until(lambda: not pair.left_in_brokers(), 60, "every queue of every broker empty")
    wait_until(lambda: not pair.left_in_journals(), 60, "every journal drained")


@pytest.fixture(params=["shared", "segregated"])
def pair_of(request: pytest.FixtureRequest):
    """The builder of a pair in each mode (only the mode's own servers are started)."""
    return request.getfixturevalue(f"{request.param}_pair")


@pytest.fixture
def cluster_path() -> str:
    return f"/rstest/{uuid.uuid4().hex}"


def pair_builder(
    mode: str, brokers: list[Any], workdir: Path, request: pytest.FixtureRequest
) -> Callable[..., Pair]:
    """Builds (not starts) a pair of `mode` on the session's servers, a fresh database and this
    test's queues and cluster path; keyword arguments, by instance name, are laid over that
    instance's config."""
    zookeeper, database, db_url, queues, cluster, instances = (
        request.getfixturevalue(name)
        for name in ("zookeeper", "database", "db_url", "queues", "cluster_path", "instances")
    )

    def make(**overrides: dict[str, Any]) -> Pair:
        pair = build_pair(
            workdir,
            mode=mode,
            brokers=brokers,
            zookeeper=zookeeper,
            database=database,
            db_url=db_url,
            queues=queues,
            cluster=cluster,
            settings=TEST_SETTINGS,
            overrides=overrides,
        )
        instances.extend(pair)
        return pair

    return make


@pytest.fixture
def shared_pair(
    tmp_path: Path, activemq: Any, request: pytest.FixtureRequest
) -> Callable[..., Pair]:
    """Two shared-storage instances: one broker, one journal directory."""
    return pair_builder("shared", [activemq], tmp_path, request)


@pytest.fixture
def group(
    tmp_path: Path,
    activemq: Any,
    zookeeper: Any,
    pg_url: str,
    queues: list[str],
    cluster_path: str,
    instances: list[Instance],
    request: pytest.FixtureRequest,
) -> Callable[..., Instance]:
    """Builds (not starts) one more group-mode instance: one broker, one journal folder for all;
    each instance lists the ones built before it as peers. In a chaos test the instances run as
    the backend says (containers under REPORTING_TEST_BACKEND=containers), elsewhere as
    processes."""
    chaos = request.node.get_closest_marker("chaos") is not None
    members = Group(
        tmp_path,
        broker_host=activemq.host,
        zookeeper_hosts=zookeeper.hosts,
        db_url=pg_url,
        queues=queues,
        cluster=cluster_path,
        settings=TEST_SETTINGS,
        instance_type=request.getfixturevalue("instance_class") if chaos else Instance,
    )

    def make(name: str, **overrides: dict[str, Any]) -> Instance:
        instance = members.add(name, **overrides)
        instances.append(instance)
        return instance

    return make


@pytest.fixture
def flow_to(queue_prefix: str, tmp_path: Path) -> Callable[..., Flow]:
    """flow_to(hosts, count=, rate=, **client_options): a Flow (not started) of reports to the
    test's queues on `hosts`, its ledger the test's "ledger"."""
    return partial(Flow, ledger=tmp_path / "ledger", queue_prefix=queue_prefix)


@pytest.fixture
def producing(activemq: Any, flow_to: Callable[..., Flow]) -> Callable[..., Flow]:
    """producing(count=, rate=): `count` reports flowing at `rate`/s to the test's queues on the
    session's broker, into a ledger (started, not waited for)."""

    def start(*, count: int, rate: int) -> Flow:
        return flow_to([activemq.host], count=count, rate=rate).start()

    return start


@pytest.fixture
def flowing(activemq: Any, flow_to: Callable[..., Flow]) -> Callable[..., Flow]:
    """flowing(members, count=, rate=300, stored=300): `count` reports sent at `rate`/s to the
    test's queues on the session's broker, into a ledger; returned once the members have stored
    more than `stored` of them."""

    def start(members: list[Instance], *, count: int, rate: int = 300, stored: int = 300) -> Flow:
        flow = flow_to([activemq.host], count=count, rate=rate).start()
        wait_until(
            lambda: sum(i.status()["stored"] for i in members) > stored, 30, "reports flowing"
        )
        return flow

    return start


@pytest.fixture
def send_all(activemq: Any, queue_prefix: str, tmp_path: Path) -> Callable[..., set[str]]:
    """send_all(count, ledger="ledger"): `count` reports sent to the test's queues on the
    session's broker, as fast as the receipts come back; the ids receipted."""

    def send(count: int, ledger: str = "ledger") -> set[str]:
        flow = Flow(
            [activemq.host], tmp_path / ledger, queue_prefix=queue_prefix, count=count, rate=0
        )
        return flow.start().join()

    return send


def start_group(
    group: Callable[..., Instance], count: int, queues: list[str]
) -> tuple[list[Instance], dict[str, str]]:
    """`count` members of a group built by the `group` fixture, started, each queue owned once
    and the shares settled (no two members' counts more than one apart)."""
    members = [group(f"rs-{i}") for i in range(count)]
    for instance in members:
        instance.start()

    def settled() -> dict[str, str] | None:
        # Every queue owned once is reached on the way too: the first member started may own
        # all but one queue while the next is still taking its share.
        assignment = spread(members, queues)
        if assignment is None:
            return None
        shares = Counter(assignment.values())
        return assignment if max(shares.values()) - min(shares.values()) <= 1 else None

    assignment = wait_until(settled, 30, "every queue owned once, the shares settled")
    return members, assignment


@pytest.fixture
def segregated_pair(
    tmp_path: Path, activemq: Any, backup_broker: Any, request: pytest.FixtureRequest
) -> Callable[..., Pair]:
    """A segregated primary (the session's broker) and backup (its own)."""
    return pair_builder("segregated", [activemq, backup_broker], tmp_path, request)


# -- database URLs for the sink's own tests ----------------------------------------------------


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.integration),
        pytest.param("mariadb", marks=pytest.mark.integration),
    ],
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database's URL, once per database: SQLite, then the session's PostgreSQL and
    MariaDB."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'reports.db'}"
    if request.param == "mariadb":
        return request.getfixturevalue("maria_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=["postgresql", "mariadb"])
def server_url(request: pytest.FixtureRequest) -> str:
    """A fresh database's URL on each database server (PostgreSQL, MariaDB), not SQLite."""
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "maria_url")


def slow_when_many(conn: Any, *, rows: int, seconds: float) -> None:
    """On PostgreSQL, in `conn`'s transaction: a statement storing more than `rows` reports
    sleeps `seconds` in a trigger (beyond the statement timeout a test sets, it meets it)."""
    conn.execute(
        text(
            f"""
            CREATE FUNCTION slow_when_many() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF (SELECT count(*) FROM stored) > {int(rows)} THEN
                    PERFORM pg_sleep({float(seconds)});
                END IF;
                RETURN NULL;
            END $$;
            CREATE TRIGGER slow_when_many AFTER INSERT ON reports
            REFERENCING NEW TABLE AS stored FOR EACH STATEMENT
            EXECUTE FUNCTION slow_when_many();
            """
        )
    )
