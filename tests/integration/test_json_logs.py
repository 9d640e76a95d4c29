"""A real `reporting-server run --log-format json`: every line of its output is one JSON object,
naming the instance and its role, with the queue a consumer line is about."""

import json
from collections.abc import Callable

import pytest

from reporting.harness.instance import Instance
from reporting.harness.waiting import wait_until

pytestmark = pytest.mark.integration


class JsonInstance(Instance):
    def _command(self) -> list[str]:
        return [*super()._command(), "--log-format", "json"]


def test_a_running_instance_logs_json_lines(
    standalone: Callable[..., Instance], instances: list[Instance], queues: list[str]
) -> None:
    built = standalone("rs-json")
    instance = JsonInstance(built.workdir, built.config)
    instances.append(instance)
    instance.start()
    wait_until(lambda: instance.status()["broker"] == "connected", 30, "the consumer to subscribe")
    instance.stop()
    output = instance.log_path.read_text().splitlines()
    # The harness's own marker lines start with "---"; everything the server wrote is JSON.
    lines = [json.loads(line) for line in output if not line.startswith("--- harness")]
    assert lines
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    consuming = [line for line in lines if "consuming" in line["message"]]
    assert consuming, [line["message"] for line in lines]
    assert consuming[0]["instance"] == "rs-json" and consuming[0]["role"] == "active"
    assert consuming[0]["queue"] == ",".join(queues)
    assert any(line["message"].endswith("stopped") for line in lines)
