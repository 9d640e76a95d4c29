"""The pairs a chaos run drives, built by the harness (reporting.harness.pair) with what a run
needs on top: its own database, queue names and ZooKeeper path, so that runs can share the
servers, and a ZooKeeper path per instance that a fault can darken."""

import uuid
from collections.abc import Sequence
from pathlib import Path

from reporting.harness import ActiveMQ, ZooKeeper
from reporting.harness.instance import TEST_SETTINGS, Instance
from reporting.harness.pair import Pair, build_pair
from reporting.harness.service import DatabaseServer
from storage.reports import KINDS


def chaos_pair(
    workdir: Path,
    *,
    mode: str,
    brokers: Sequence[ActiveMQ],
    zookeeper: ZooKeeper,
    database: DatabaseServer,
    session_timeout_s: float = 2.0,
    instance_type: type[Instance] = Instance,
) -> Pair:
    """Shared: rs-a and rs-b on one broker. Segregated: rs-p (primary) and rs-b (backup), each on
    its broker of `brokers`. A fresh database on `database` (PostgreSQL or MariaDB). The
    instances are `instance_type`'s: processes or containers."""
    tag = uuid.uuid4().hex[:10]
    return build_pair(
        workdir,
        mode=mode,
        brokers=brokers,
        zookeeper=zookeeper,
        database=database,
        db_url=database.create_database(f"chaos_{tag}"),
        queues=[f"c{tag}.gvp.reporting.{kind}" for kind in KINDS],
        cluster=f"/chaos/{tag}",
        session_timeout_s=session_timeout_s,
        zookeeper_paths=True,
        settings=TEST_SETTINGS,
        instance_type=instance_type,
    )
