"""Chaos fixtures beyond the session's servers (tests/conftest.py): the instance fixtures of the
integration tests, one definition for both."""

from tests.integration.conftest import (  # noqa: F401  (fixtures, found by pytest by name)
    cluster_path,
    flow_to,
    flowing,
    group,
    instances,
    queue_prefix,
    queues,
)
