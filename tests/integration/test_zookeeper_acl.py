"""ZooKeeper with [ha] credentials: the nodes of the pair are its own (digest ACL, creator-all);
a client without the credentials can neither move the lock, nor remove the primary node, nor
change the epoch."""

import uuid
from collections.abc import Callable, Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import make_digest_acl

from reporting.ha import Election, Role, make_election
from reporting.harness import ZooKeeper
from reporting.harness.waiting import wait_until

pytestmark = pytest.mark.integration

USER, PASSWORD = "rs-pair", "zk-Pw-51d0"


def client(zookeeper: ZooKeeper, *, auth: bool) -> KazooClient:
    zk = KazooClient(
        hosts=zookeeper.hosts,
        timeout=2.0,
        auth_data=[("digest", f"{USER}:{PASSWORD}")] if auth else None,
    )
    zk.start(timeout=30)
    return zk


@pytest.fixture
def zk(zookeeper: ZooKeeper) -> Iterator[Callable[..., KazooClient]]:
    started: list[KazooClient] = []

    def make(*, auth: bool) -> KazooClient:
        started.append(client(zookeeper, auth=auth))
        return started[-1]

    yield make
    for zk in started:
        zk.stop()
        zk.close()


@pytest.fixture
def cluster(zookeeper: ZooKeeper) -> Iterator[str]:
    # A folder of its own: the test also checks that the folders above the cluster stay open.
    path = f"/rsacl-{uuid.uuid4().hex[:8]}/pair"
    yield path
    zk = client(zookeeper, auth=True)
    try:
        zk.delete(path.rsplit("/", 1)[0], recursive=True)
    finally:
        zk.stop()
        zk.close()


@pytest.fixture
def elect(zookeeper: ZooKeeper, cluster: str) -> Iterator[Callable[..., Election]]:
    started: list[Election] = []

    def make(name: str, mode: str, role: str = "") -> Election:
        election = make_election(
            mode=mode,
            name=name,
            role=role,
            zookeeper=zookeeper.hosts,
            cluster=cluster,
            session_timeout_s=2.0,
            grace_s=0.5,
            healthy=lambda: True,
            on_change=lambda change: None,
            auth=(USER, PASSWORD),
        )
        election.start()
        started.append(election)
        return election

    yield make
    for election in started:
        election.stop()


def test_without_credentials_the_lock_and_epoch_cannot_be_touched(elect, zk, cluster) -> None:
    election = elect("rs-a", "shared")
    wait_until(lambda: election.role is Role.ACTIVE, 30, "rs-a to take the lock")
    owner, stranger = zk(auth=True), zk(auth=False)
    lock, epoch = f"{cluster}/lock", f"{cluster}/epoch"
    contenders = owner.get_children(lock)
    assert len(contenders) == 1
    only_owner = [make_digest_acl(USER, PASSWORD, all=True)]
    for path in (cluster, lock, f"{lock}/{contenders[0]}", epoch):
        assert owner.get_acls(path)[0] == only_owner, path
    # The folder above stays open, so other pairs with other credentials can live beside this one.
    stranger.create(f"{cluster.rsplit('/', 1)[0]}/other-pair")

    with pytest.raises(NoAuthError):
        stranger.delete(f"{lock}/{contenders[0]}")
    with pytest.raises(NoAuthError):
        stranger.delete(lock, recursive=True)
    with pytest.raises(NoAuthError):
        stranger.set(epoch, b"999")
    with pytest.raises(NoAuthError):
        stranger.get(epoch)
    with pytest.raises(NoAuthError):
        stranger.create(f"{lock}/intruder", ephemeral=True)
    assert election.role is Role.ACTIVE and election.epoch == 1

    # The pair's own credentials can: a second instance, or an operator cleaning up.
    value, stat = owner.get(epoch)
    owner.set(epoch, value, version=stat.version)
    owner.delete(f"{lock}/{contenders[0]}")
    assert contenders[0] not in owner.get_children(lock)


def test_without_credentials_the_primary_node_cannot_be_removed(elect, zk, cluster) -> None:
    primary = elect("rs-p", "segregated", "primary")
    wait_until(lambda: primary.role is Role.ACTIVE, 30, "the primary to hold its node")
    owner, stranger = zk(auth=True), zk(auth=False)
    node = f"{cluster}/primary"
    assert owner.get_acls(node)[0] == [make_digest_acl(USER, PASSWORD, all=True)]
    with pytest.raises(NoAuthError):
        stranger.delete(node)
    with pytest.raises(NoAuthError):
        stranger.set(node, b"rs-b")
    assert owner.get(node)[1].ephemeralOwner == primary.client.client_id[0]
    owner.delete(node)
    assert owner.exists(node) is None
