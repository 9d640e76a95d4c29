"""The pair and group builders: who runs on which broker and journal, who knows whom, and what
settled and drained mean in each mode. Built only; nothing is started."""

from pathlib import Path

import pytest

from reporting.errors import HarnessError
from reporting.harness import ActiveMQ, Postgres, ZooKeeper
from reporting.harness.group import Group
from reporting.harness.pair import Pair, build_pair

QUEUES = ["t.gvp.reporting.cdr", "t.gvp.reporting.or"]


def pair(tmp_path: Path, mode: str, brokers: int, **options) -> Pair:
    return build_pair(
        tmp_path,
        mode=mode,
        brokers=[ActiveMQ(tmp_path / f"amq{i}") for i in range(brokers)],
        zookeeper=ZooKeeper(tmp_path / "zk"),
        database=Postgres(tmp_path / "pg"),
        db_url="postgresql+psycopg://rs@127.0.0.1:5432/t",
        queues=QUEUES,
        cluster="/t/1",
        **options,
    )


def test_shared_pair_shares_a_broker_and_a_journal(tmp_path: Path) -> None:
    a, b = built = pair(tmp_path, "shared", 1, settings={"database": {"batch_records": 7}})
    assert [a.config["name"], b.config["name"]] == ["rs-a", "rs-b"]
    assert a.config["broker"]["hosts"] == b.config["broker"]["hosts"]
    assert a.config["journal"] == b.config["journal"]
    assert a.config["ha"]["peers"] == [b.listen] and b.config["ha"]["peers"] == [a.listen]
    assert a.config["database"] == {"url": built.db_url, "batch_records": 7}
    assert "role" not in a.config["ha"] and built.exclusive
    assert built.producer_hosts == a.config["broker"]["hosts"]


def test_segregated_pair_has_a_broker_and_a_journal_each(tmp_path: Path) -> None:
    overrides = {"rs-b": {"ha": {"grace_s": 1.0}}}
    primary, backup = built = pair(tmp_path, "segregated", 2, overrides=overrides)
    assert (primary.config["ha"]["role"], backup.config["ha"]["role"]) == ("primary", "backup")
    assert primary.config["broker"]["hosts"] != backup.config["broker"]["hosts"]
    assert primary.config["journal"] != backup.config["journal"]
    assert built.producer_hosts == [
        *primary.config["broker"]["hosts"],
        *backup.config["broker"]["hosts"],
    ]
    assert backup.config["ha"]["grace_s"] == 1.0 and "grace_s" not in primary.config["ha"]
    assert not built.exclusive


def test_zookeeper_paths_give_each_instance_its_own_proxy(tmp_path: Path) -> None:
    with pair(tmp_path, "shared", 1, zookeeper_paths=True) as built:
        a, b = built
        assert set(built.zookeeper_paths) == {"rs-a", "rs-b"}
        assert a.config["ha"]["zookeeper"] == built.zookeeper_paths["rs-a"].host
        assert a.config["ha"]["zookeeper"] != b.config["ha"]["zookeeper"]


@pytest.mark.parametrize(("mode", "brokers"), [("shared", 2), ("segregated", 3), ("group", 1)])
def test_a_pair_on_the_wrong_brokers_or_mode_is_refused(
    tmp_path: Path, mode: str, brokers: int
) -> None:
    with pytest.raises(HarnessError):
        pair(tmp_path, mode, brokers)


def test_settled_and_drained_by_mode(tmp_path: Path) -> None:
    shared = pair(tmp_path / "s", "shared", 1)
    assert shared.is_settled({"rs-a": "standby", "rs-b": "active"})
    assert not shared.is_settled({"rs-a": "active", "rs-b": "active"})
    # One journal: the active's figure counts, a standby's is not kept current.
    assert shared.is_drained({"rs-a": "active", "rs-b": "standby"}, {"rs-a": 0, "rs-b": 5})
    segregated = pair(tmp_path / "g", "segregated", 2)
    assert not segregated.is_settled({"rs-p": "standby", "rs-b": "active"})
    assert segregated.is_settled({"rs-p": "active", "rs-b": "standby"})
    assert not segregated.is_drained({"rs-p": "active", "rs-b": "standby"}, {"rs-p": 0, "rs-b": 5})


def test_group_members_list_the_ones_before_them(tmp_path: Path) -> None:
    group = Group(
        tmp_path,
        broker_host="127.0.0.1:61613",
        zookeeper_hosts="127.0.0.1:2181",
        db_url="sqlite:///x.db",
        queues=QUEUES,
        cluster="/g/1",
    )
    first = group.add("rs-0")
    second = group.add("rs-1", broker={"queues": QUEUES[:1]})
    assert first.config["ha"]["peers"] == [] and second.config["ha"]["peers"] == [first.listen]
    assert first.config["journal"] == second.config["journal"]
    assert second.config["broker"] == {"hosts": ["127.0.0.1:61613"], "queues": QUEUES[:1]}
    assert list(group) == [first, second]
