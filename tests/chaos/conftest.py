"""Chaos fixtures beyond the session's servers (tests/conftest.py)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from reporting.harness import ActiveMQ


@pytest.fixture
def backup_broker(tmp_path: Path) -> Iterator[ActiveMQ]:
    """A second ActiveMQ: the segregated backup's own store."""
    broker = ActiveMQ(tmp_path / "backup-activemq")
    broker.start()
    yield broker
    broker.stop()
