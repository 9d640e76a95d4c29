"""`reporting-server status`: when the instances it asked make a healthy pair or group."""

from reporting.commands.status import healthy
from reporting.config import parse_config

PAIR = parse_config({"ha": {"mode": "shared"}})
GROUP = parse_config({"ha": {"mode": "group"}, "broker": {"queues": ["a.cdr", "a.or", "a.sq"]}})


def test_a_pair_is_healthy_with_exactly_one_active() -> None:
    assert healthy(PAIR, [{"role": "active"}, {"role": "standby"}])
    assert not healthy(PAIR, [{"role": "active"}, {"role": "active"}])
    assert not healthy(PAIR, [{"role": "standby"}, {"role": "standby"}])
    assert not healthy(PAIR, [{"role": "active"}, {"role": "unreachable"}])


def test_a_group_is_healthy_with_every_queue_owned_once() -> None:
    rows = [
        {"role": "active", "owned": ["a.cdr", "a.sq"]},
        {"role": "active", "owned": ["a.or"]},
        {"role": "standby", "owned": []},
    ]
    assert healthy(GROUP, rows)
    assert not healthy(GROUP, [rows[0], rows[2]])  # a.or owned by nobody
    doubled = [rows[0], rows[1], {"role": "active", "owned": ["a.or"]}]
    assert not healthy(GROUP, doubled)
    assert not healthy(GROUP, [*rows, {"role": "unreachable"}])


def test_an_instance_that_cannot_take_part_in_its_election_is_unhealthy() -> None:
    # A third instance with a wrong ZooKeeper password stands by for ever: nobody covers for the
    # active if it dies, though exactly one is active now.
    refused = {"role": "standby", "election_error": "zookeeper h:1: /c: no access as user 'u'"}
    assert not healthy(PAIR, [{"role": "active"}, {"role": "standby"}, refused])
    assert healthy(PAIR, [{"role": "active"}, {"role": "standby", "election_error": None}])
    rows = [{"role": "active", "owned": ["a.cdr", "a.or", "a.sq"]}, {**refused, "owned": []}]
    assert not healthy(GROUP, rows)


def test_an_instance_whose_database_is_down_is_unhealthy() -> None:
    # A refused password (or a wrong CA, or an outage): the active buffers and stores nothing.
    refused = {"role": "active", "database_error": 'password authentication failed for user "u"'}
    assert not healthy(PAIR, [refused, {"role": "standby"}])
    assert not healthy(PAIR, [{"role": "active"}, {**refused, "role": "standby"}])
    assert healthy(PAIR, [{"role": "active", "database_error": None}, {"role": "standby"}])
    assert not healthy(GROUP, [{**refused, "owned": ["a.cdr", "a.or", "a.sq"]}])
