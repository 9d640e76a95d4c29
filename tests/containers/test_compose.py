"""Each compose file brought up with docker-compose and the host-network override, as an operator
would run it (images from scripts/containers, passwords from `scripts/containers secrets`):
receipted reports through the active instance, its container killed, more reports through the
one that took over, the others' /status, the killed container started again, then the ledger
against the database (nothing lost, nothing doubled)."""

import http.client
import json
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reporting.config import KINDS
from reporting.harness.waiting import wait_until
from reporting.samples import sample_report
from reporting.wire.producer import ReportClient
from tests.containers.compose_stack import ComposeStack

pytestmark = pytest.mark.containers

# Where producers send: the broker ports of each stack (as its compose file has them; the stack
# runs them on free ports), primary first.
BROKERS = {
    "shared": [61613],
    "segregated": [61613, 61614],
    "group": [61613],
    "ensemble": [61613],
    "pg-standby": [61613],
}
# Services that share an instance's host: lost with it.
HOST_OF = {("segregated", "rs-primary"): ["activemq-primary"]}
REPORTS_PER_PHASE = 200


def status(listen: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{listen}/status", timeout=1) as reply:
            return json.load(reply)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException):
        return None


@pytest.fixture(params=list(BROKERS))
def stack(request: pytest.FixtureRequest, engine: None, tmp_path: Path) -> Iterator[ComposeStack]:
    stack = ComposeStack(request.param, tmp_path)
    try:
        stack.up()
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.down()
    assert not stack.containers(), "containers left after docker-compose down"


def send(stack: ComposeStack, ledger: Path, count: int) -> None:
    client = ReportClient(
        [stack.host(port) for port in BROKERS[stack.name]],
        user="producer",
        password=stack.secret("broker-producer"),
        ledger=ledger,
        in_flight=50,
    )
    rng = random.Random(len(ledger.read_text()) if ledger.exists() else 0)
    try:
        for i in range(count):
            kind = KINDS[i % len(KINDS)]
            client.send(kind, sample_report(kind, rng), report_id=f"{kind}-{uuid.uuid4().hex}")
        client.flush()
        assert not client.stats.refused, f"the broker refused: {client.stats.refused[:3]}"
    finally:
        client.close()


def stored_counts(stack: ComposeStack, ids: set[str]) -> dict[str, int]:
    with psycopg.connect(
        host="127.0.0.1",
        port=stack.ports[5432],  # pg-standby: the primary
        user="reporting",
        password=stack.secret("postgres-owner"),
        dbname="reporting",
        connect_timeout=5,
    ) as connection:
        rows = connection.execute(
            "SELECT report_id, count(*) FROM reports WHERE report_id = ANY(%s) GROUP BY report_id",
            (list(ids),),
        ).fetchall()
    return dict(rows)


def actives(listens: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The instances whose /status says active, with their status."""
    out = {}
    for service, listen in listens.items():
        answer = status(listen)
        if answer and answer.get("role") == "active":
            out[service] = answer
    return out


def settled(stack: ComposeStack, listens: dict[str, str]) -> dict[str, dict[str, Any]] | None:
    """Who is active once the stack is settled: exactly one instance of a pair, or in a group
    instances owning every queue once."""
    active = actives(listens)
    if stack.name != "group":
        return active if len(active) == 1 else None
    owned = [queue for answer in active.values() for queue in answer.get("owned", [])]
    expected = {
        queue for config in stack.server_configs().values() for queue in config["broker"]["queues"]
    }
    return active if sorted(owned) == sorted(expected) else None


def test_compose_stack_survives_the_active_container_killed(
    stack: ComposeStack, tmp_path: Path
) -> None:
    listens = {service: c["http"]["listen"] for service, c in stack.server_configs().items()}
    wait_until(lambda: all(status(listen) for listen in listens.values()), 240, "every /status")
    active = wait_until(lambda: settled(stack, listens), 120, "the roles to settle")

    ledger = tmp_path / "ledger"
    send(stack, ledger, REPORTS_PER_PHASE)

    # The active instance (in a group: the one owning most queues) loses its container; in the
    # segregated pair its broker goes with it (the primary's host lost), so producers fail over.
    victim = max(active, key=lambda s: len(active[s].get("owned", [])))
    lost = [victim, *HOST_OF.get((stack.name, victim), [])]
    killed_at = time.monotonic()
    for service in lost:
        stack.kill(service)
    survivors = {s: listen for s, listen in listens.items() if s != victim}
    wait_until(lambda: settled(stack, survivors), 60, f"the others to take over from {victim}")
    print(f"{stack.name}: {victim} killed; taken over in {time.monotonic() - killed_at:.1f} s")

    send(stack, ledger, REPORTS_PER_PHASE)
    for service, listen in survivors.items():
        answer = wait_until(
            lambda listen=listen: (s := status(listen)) and s["database"] == "up" and s, 30, service
        )
        assert answer["broker"] == "connected" or answer["role"] == "standby", answer

    # The killed containers started again (`docker start`): they come back, the roles settle.
    for service in reversed(lost):
        stack.start(service)
    wait_until(lambda: status(listens[victim]), 120, f"{victim} back")
    wait_until(lambda: settled(stack, listens), 120, "the roles to settle again")

    ids = {line for line in ledger.read_text().splitlines() if line}
    assert len(ids) == 2 * REPORTS_PER_PHASE

    def all_stored() -> bool:
        return len(stored_counts(stack, ids)) == len(ids)

    try:
        wait_until(all_stored, 120, "every receipted report stored", every_s=0.5)
    finally:
        counts = stored_counts(stack, ids)
        missing = ids - set(counts)
        doubled = {i for i, n in counts.items() if n > 1}
        assert not missing, f"{len(missing)} receipted reports missing, e.g. {sorted(missing)[:3]}"
        assert not doubled, f"{len(doubled)} reports stored twice, e.g. {sorted(doubled)[:3]}"
