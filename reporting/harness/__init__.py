"""Local ActiveMQ, ZooKeeper, PostgreSQL and MariaDB servers for the demo pair and the tests.

Each server runs from the machine's packages on free 127.0.0.1 ports in its own workdir, can be
stopped, killed with SIGKILL, paused with SIGSTOP and restarted on the same ports and data.
"""

from reporting.harness.activemq import ActiveMQ
from reporting.harness.ensemble import ZooKeeperEnsemble
from reporting.harness.mariadb import MariaDB
from reporting.harness.postgres import Postgres
from reporting.harness.proxy import TcpProxy
from reporting.harness.service import Service
from reporting.harness.stack import Stack
from reporting.harness.zookeeper import ZooKeeper

__all__ = [
    "ActiveMQ",
    "MariaDB",
    "Postgres",
    "Service",
    "Stack",
    "TcpProxy",
    "ZooKeeper",
    "ZooKeeperEnsemble",
]
