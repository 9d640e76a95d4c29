"""Local ActiveMQ, ZooKeeper and PostgreSQL servers for the demo pair and the tests.

Each server runs from the machine's packages on free 127.0.0.1 ports in its own workdir, can be
stopped, killed with SIGKILL, paused with SIGSTOP and restarted on the same ports and data.
"""

from reporting.harness.postgres import Postgres
from reporting.harness.service import Service

__all__ = ["Postgres", "Service"]
