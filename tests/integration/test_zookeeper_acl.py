"""ZooKeeper with [ha] credentials: the nodes of the pair are its own (digest ACL, creator-all);
a client without the credentials can neither move the lock, nor remove the primary node, nor
change the epoch. An instance that cannot take part (a wrong or missing password, a node the pair
relies on that someone else created open) says so once and stands by for good."""

import copy
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE, Id, Permissions, make_digest_acl

from reporting.errors import ZooKeeperRefused
from reporting.ha import Election, Role, RoleChange, make_election
from reporting.ha.group import GroupElection, queue_key
from reporting.harness import ZooKeeper
from reporting.harness.instance import to_toml
from reporting.harness.pair import active_of, roles
from reporting.harness.ports import free_port
from reporting.harness.waiting import wait_until

pytestmark = pytest.mark.integration

USER, PASSWORD = "rs-pair", "zk-Pw-51d0"


def client(zookeeper: ZooKeeper, *, auth: bool) -> KazooClient:
    zk = KazooClient(
        hosts=zookeeper.hosts,
        timeout=2.0,
        auth_data=[("digest", f"{USER}:{PASSWORD}")] if auth else None,
        # With the credentials, nodes are made as the pair makes them.
        default_acl=[make_digest_acl(USER, PASSWORD, all=True)] if auth else None,
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
    changes: dict[str, list[RoleChange]] = {}

    def make(
        name: str,
        mode: str,
        role: str = "",
        *,
        auth: tuple[str, str] | None = (USER, PASSWORD),
        refusals: Callable[[ZooKeeperRefused], None] | None = None,
    ) -> Election:
        changes[name] = []
        election = make_election(
            mode=mode,
            name=name,
            role=role,
            zookeeper=zookeeper.hosts,
            cluster=cluster,
            session_timeout_s=2.0,
            grace_s=0.5,
            healthy=lambda: True,
            on_change=changes[name].append,
            auth=auth,
        )
        if refusals is not None:
            election.watch_refusals(refusals)
        election.start()
        started.append(election)
        return election

    make.changes = changes  # type: ignore[attr-defined]
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


def test_folders_above_the_cluster_give_nobody_admin(elect, zk, cluster) -> None:
    election = elect("rs-a", "shared")
    wait_until(lambda: election.role is Role.ACTIVE, 30, "rs-a to take the lock")
    stranger = zk(auth=False)
    parent = cluster.rsplit("/", 1)[0]
    acls, _ = stranger.get_acls(parent)
    assert [(acl.id, acl.perms) for acl in acls] == [
        (Id("world", "anyone"), Permissions.READ | Permissions.CREATE | Permissions.DELETE)
    ]
    # Without ADMIN a stranger cannot close the folder to the pairs that live in it.
    with pytest.raises(NoAuthError):
        stranger.set_acls(parent, [make_digest_acl("intruder", "x", all=True)])


class Refusals:
    """watch_refusals of one election: what it was told, and when."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, ZooKeeperRefused]] = []

    def __call__(self, refusal: ZooKeeperRefused) -> None:
        self.seen.append((time.monotonic(), refusal))


def refused_within(election: Election, refusals: Refusals, started: float, what: str):
    wait_until(lambda: refusals.seen, 10, what)
    (at, refusal), *more = refusals.seen
    assert not more, "told more than once"
    print(f"\n{what}: refused {at - started:.2f} s after start: {refusal}")
    assert election.error == str(refusal)
    assert election.role is Role.STANDBY
    return refusal


def test_a_wrong_password_is_refused_at_start_and_the_pair_goes_on(
    elect, zookeeper, cluster
) -> None:
    right = elect("rs-a", "shared")
    wait_until(lambda: right.role is Role.ACTIVE, 30, "rs-a to take the lock")
    refusals = Refusals()
    started = time.monotonic()
    wrong = elect("rs-c", "shared", auth=(USER, "not-the-password"), refusals=refusals)
    refusal = refused_within(wrong, refusals, started, "wrong password")
    assert (refusal.hosts, refusal.node) == (zookeeper.hosts, cluster)
    assert refusal.reason == (
        f"no access as user {USER!r}: wrong password, or the node is not this pair's"
    )
    assert "not-the-password" not in str(refusal)
    assert right.role is Role.ACTIVE and right.error is None


def test_a_missing_password_is_refused_at_start(elect, cluster) -> None:
    right = elect("rs-a", "segregated", "primary")
    wait_until(lambda: right.role is Role.ACTIVE, 30, "the primary to hold its node")
    refusals = Refusals()
    started = time.monotonic()
    backup = elect("rs-b", "segregated", "backup", auth=None, refusals=refusals)
    refusal = refused_within(backup, refusals, started, "missing password")
    assert refusal.node == cluster
    assert refusal.reason.startswith("no access without credentials: set [ha] user")


def test_access_lost_later_is_refused_too(elect, zk, cluster) -> None:
    active = elect("rs-a", "shared")
    wait_until(lambda: active.role is Role.ACTIVE, 30, "rs-a to take the lock")
    refusals = Refusals()
    standby = elect("rs-b", "shared", refusals=refusals)
    wait_until(lambda: standby.holder == "rs-a", 10, "rs-b to see rs-a as holder")
    # Someone with the pair's rights makes the epoch read-only.
    epoch = f"{cluster}/epoch"
    read_only = make_digest_acl(USER, PASSWORD, read=True, admin=True)
    zk(auth=True).set_acls(epoch, [read_only])
    changed = time.monotonic()
    active.stop()  # rs-b takes the lock, and cannot bump the epoch
    refusal = refused_within(standby, refusals, changed, "access lost")
    assert refusal.node == epoch
    assert refusal.reason.startswith(f"has ACL digest:{USER}:***:ra, not this pair's own")
    assert not any(c.role is Role.ACTIVE for c in elect.changes["rs-b"])


# A node created before the pair's first start, open to all: by someone else, or by the pair
# itself when it still ran without credentials.
PRE_EMPTED = {
    "cluster path": ("shared", "", ""),
    "lock": ("shared", "", "lock"),
    "epoch": ("shared", "", "epoch"),
    "segregated epoch": ("segregated", "primary", "epoch-rs-a"),
    "primary node": ("segregated", "backup", "primary"),
}


@pytest.mark.parametrize("mode, role, node", PRE_EMPTED.values(), ids=PRE_EMPTED.keys())
def test_a_node_created_open_before_the_pair_is_refused(
    elect, zk, cluster, mode: str, role: str, node: str
) -> None:
    owner = zk(auth=True)
    path = f"{cluster}/{node}" if node else cluster
    owner.ensure_path(cluster.rsplit("/", 1)[0], acl=OPEN_ACL_UNSAFE)
    if path != cluster:
        owner.create(cluster)  # the pair's own (the client's default ACL)
    owner.create(path, b"rs-x", acl=OPEN_ACL_UNSAFE)
    refusals = Refusals()
    started = time.monotonic()
    election = elect("rs-a", mode, role, refusals=refusals)
    refusal = refused_within(election, refusals, started, f"{path} open")
    assert refusal.node == path
    assert refusal.reason.startswith(
        f"has ACL world:anyone:cdrwa, not this pair's own (digest:{USER}:***:cdrwa)"
    )
    assert not any(c.role is Role.ACTIVE for c in elect.changes["rs-a"])


def test_a_group_node_created_open_before_the_group_is_refused(zookeeper, zk, cluster) -> None:
    queues = ["t.gvp.reporting.cdr", "t.gvp.reporting.or"]
    epoch = f"{queue_key(cluster, queues[1])}/epoch"
    owner = zk(auth=True)
    owner.ensure_path(cluster.rsplit("/", 1)[0], acl=OPEN_ACL_UNSAFE)
    owner.ensure_path(queue_key(cluster, queues[1]))
    owner.create(epoch, b"7", acl=OPEN_ACL_UNSAFE)
    changes: list[tuple[str, RoleChange]] = []
    election = GroupElection(
        name="rs-g",
        zookeeper=zookeeper.hosts,
        cluster=cluster,
        queues=queues,
        session_timeout_s=2.0,
        on_change=lambda queue, change: changes.append((queue, change)),
        auth=(USER, PASSWORD),
    )
    refusals = Refusals()
    election.watch_refusals(refusals)
    started = time.monotonic()
    election.start()
    try:
        refusal = refused_within(election, refusals, started, "group epoch open")
        assert refusal.node == epoch
        assert election.owned() == []
        assert not any(change.role is Role.ACTIVE for _, change in changes)
    finally:
        election.stop()


def test_an_instance_with_a_wrong_password_exits_with_one_line(
    shared_pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RS_ZK_PASSWORD", PASSWORD)
    keys = {"ha": {"user": USER, "password_env": "RS_ZK_PASSWORD"}}
    pair = shared_pair(**{"rs-a": keys, "rs-b": keys})
    for instance in pair:
        instance.start()
    wait_until(lambda: active_of(pair), 30, "an active instance")

    # A third instance of the pair, its password file wrong; `status` asks it and the pair.
    config = copy.deepcopy(pair[0].config)
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password")
    wrong.chmod(0o600)
    config["name"] = "rs-c"
    config["ha"] = {**config["ha"], "password_file": str(wrong)}
    del config["ha"]["password_env"]
    config["ha"]["peers"] = [instance.listen for instance in pair]
    config["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    path = tmp_path / "rs-c.toml"
    path.write_text(to_toml(config))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "reporting.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    print(f"\nwrong zookeeper password: exit {done.returncode} after {took:.1f} s")
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"reporting-server: zookeeper {config['ha']['zookeeper']}: {config['ha']['cluster']}: "
        f"no access as user {USER!r}: wrong password, or the node is not this pair's"
    )
    said = [line for line in done.stderr.splitlines() if "no access as user" in line]
    assert len(said) == 2 and "ERROR reporting.ha.contest" in said[0], done.stderr  # log, exit
    assert "Traceback" not in done.stderr
    assert "not-the-password" not in done.stderr + done.stdout
    assert took < 15, "a refusal is said within seconds, not after a time-out"
    assert sorted(roles(pair).values()) == ["active", "standby"]

    status = subprocess.run(
        [sys.executable, "-m", "reporting.cli", "status", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 1, status.stdout + status.stderr
