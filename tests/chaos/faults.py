"""The faults of a chaos run, each injected into a settled pair and undone again.

A fault picks its target when it runs (the active instance is whichever holds the role then),
draws its durations from the run's random generator, marks what it does on the timeline, and
measures the failovers it causes against the limit the guarantees set. The runner waits for the
pair to settle again after each one. `modes` says which pairs a fault applies to.
"""

import functools
import json
import random
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from reporting.errors import HarnessError
from reporting.harness.instance import Instance
from reporting.harness.pair import Pair, short_name
from reporting.samples import database_poison, sample_report
from reporting.wire.producer import ReportClient, queues_by_kind
from storage.database import Sink
from storage.database.schema import rejected_reports
from storage.journal import Journal
from storage.reports import from_record


class Stage(Protocol):
    """What a fault may do to the run (implemented by the runner)."""

    rng: random.Random
    pair: Pair

    def active(self) -> Instance:
        """The active instance of the settled pair."""

    def mark(self, label: str, *, recovery: bool = False) -> None:
        """A marker on the timeline: the fault itself, or (recovery) its undoing."""

    def hold(self, low_s: float, high_s: float) -> float:
        """Let a random time in [low_s, high_s] pass: the fault's duration."""

    def failover(self, fault: str, old: Instance, since: float, limit_s: float) -> None:
        """Wait for another instance to become active and record how long it took from `since`
        (a time.monotonic() taken just before the fault)."""

    def wait_role(self, instance: Instance, role: str, timeout_s: float) -> bool:
        """Wait until the sampler sees `instance` in `role`."""

    def freeze(self, instance: Instance) -> None:
        """SIGSTOP the instance, telling the sampler first."""

    def thaw(self, instance: Instance) -> None:
        """SIGCONT the instance, then tell the sampler."""

    def start_instance(self, instance: Instance) -> None:
        """Start a killed or stopped instance again and mark it."""

    def note(self, **details: object) -> None:
        """Facts about this fault for the result (fenced writes seen, choices made)."""


# Whole-process and dark-path failovers wait for the session to expire on the server; one more
# second to elect and report.
FAILOVER_SLACK_S = 1.0
# A clean stop hands the role over at once.
HANDOVER_LIMIT_S = 1.0


class Fault:
    name = "fault"
    modes: frozenset[str] = frozenset({"shared", "segregated"})

    def apply(self, stage: Stage) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


def fail_over(
    stage: Stage,
    fault: str,
    active: Instance,
    action: str,
    stop: Callable[[], None],
    limit_s: float,
) -> float:
    """Marks `action` on the timeline, stops the active with it and waits for the other to take
    over within `limit_s`; returns when the active was stopped (time.monotonic())."""
    stage.mark(f"{action} {short_name(active)}")
    since = time.monotonic()
    stop()
    stage.failover(fault, active, since, limit_s)
    return since


class KillActive(Fault):
    """kill -9 of the active: the standby takes over within session_timeout + 1 s."""

    name = "kill-active"

    def apply(self, stage: Stage) -> None:
        active = stage.active()
        limit_s = stage.pair.session_timeout_s + FAILOVER_SLACK_S
        fail_over(stage, self.name, active, "kill -9", active.kill, limit_s)
        stage.hold(0.5, 4.0)
        stage.start_instance(active)


class TermActive(Fault):
    """SIGTERM of the active: it hands the role over cleanly within a second."""

    name = "term-active"

    def apply(self, stage: Stage) -> None:
        active = stage.active()
        fail_over(stage, self.name, active, "SIGTERM", active.stop, HANDOVER_LIMIT_S)
        stage.hold(0.5, 4.0)
        stage.start_instance(active)


class PauseActive(Fault):
    """SIGSTOP of the active for longer than its session, then SIGCONT: the other takes over.
    Shared: the resumed one steps down, and any write it still attempts is refused by the fence.
    Segregated: the resumed primary takes its role back and the backup stands down."""

    name = "pause-active"

    def apply(self, stage: Stage) -> None:
        active = stage.active()
        session_s = stage.pair.session_timeout_s
        fenced_before = fenced_writes(active)
        freeze = functools.partial(stage.freeze, active)
        since = fail_over(stage, self.name, active, "SIGSTOP", freeze, session_s + FAILOVER_SLACK_S)
        # Longer than the session in all, and some of it with the other instance writing.
        stage.hold(max(0.0, 1.5 * session_s - (time.monotonic() - since)), 2.0 * session_s)
        stage.mark(f"SIGCONT {short_name(active)}", recovery=True)
        stage.thaw(active)
        if stage.pair.exclusive:
            stepped_down = stage.wait_role(active, "standby", 30)
            stage.note(stepped_down=stepped_down)
        stage.note(fenced_writes=fenced_writes(active) - fenced_before)


class ZooKeeperRestart(Fault):
    """ZooKeeper killed -9 and restarted: both stand by while it is gone, one comes back."""

    name = "zookeeper-restart"

    def apply(self, stage: Stage) -> None:
        zookeeper = stage.pair.zookeeper
        stage.mark("kill -9 zookeeper")
        zookeeper.kill()
        stage.hold(0.5, 2.0 * stage.pair.session_timeout_s)
        stage.mark("restart zookeeper", recovery=True)
        zookeeper.restart()


class DatabaseOutage(Fault):
    """The database server (PostgreSQL or MariaDB) killed -9 and restarted later; in some runs
    the active is killed meanwhile, so the new active starts with a backlog it can only replay
    once the database is back."""

    name = "database-outage"

    def apply(self, stage: Stage) -> None:
        database = stage.pair.database
        with_failover = stage.rng.random() < 0.5
        stage.note(with_failover=with_failover)
        active = stage.active()
        stage.mark(f"kill -9 {database.name}")
        database.kill()
        stage.hold(0.5, 3.0)
        if with_failover:
            limit_s = stage.pair.session_timeout_s + FAILOVER_SLACK_S
            fail_over(stage, self.name, active, "kill -9", active.kill, limit_s)
            stage.hold(0.5, 3.0)
        stage.mark(f"restart {database.name}", recovery=True)
        database.restart()
        if with_failover:
            stage.hold(0.0, 2.0)
            stage.start_instance(active)


class BrokerRestart(Fault):
    """The active's broker killed -9 and restarted: consumer and producer reconnect; what the
    broker confirmed survives in its store."""

    name = "broker-restart"

    def apply(self, stage: Stage) -> None:
        broker = stage.pair.brokers[short_name(stage.active())]
        stage.mark("kill -9 broker")
        broker.kill()
        stage.hold(0.5, 3.0)
        stage.mark("restart broker", recovery=True)
        broker.restart()


class ZooKeeperPathDark(Fault):
    """The active's network path to ZooKeeper goes dark (nothing either way) and heals: the
    active stands by before its session can expire, the other takes over."""

    name = "zookeeper-path-dark"

    def apply(self, stage: Stage) -> None:
        active = stage.active()
        path = stage.pair.zookeeper_paths[short_name(active)]
        session_s = stage.pair.session_timeout_s
        stage.mark(f"ZooKeeper path of {short_name(active)} dark")
        since = time.monotonic()
        path.blackhole()
        stage.failover(self.name, active, since, session_s + FAILOVER_SLACK_S)
        stage.hold(max(0.0, 1.5 * session_s - (time.monotonic() - since)), 3.0 * session_s)
        stage.mark(f"ZooKeeper path of {short_name(active)} healed", recovery=True)
        path.heal()


class HostDown(Fault):
    """The active's whole host gone: the instance and its own broker killed -9 together.
    Producers fail over to the other broker, the other instance activates; when both come back
    the backup drains its own broker and stands down, leaving nothing stranded."""

    name = "host-down"
    modes = frozenset({"segregated"})

    def apply(self, stage: Stage) -> None:
        active = stage.active()
        broker = stage.pair.brokers[short_name(active)]
        stage.mark(f"kill -9 {short_name(active)} and its broker")
        since = time.monotonic()
        active.kill()
        broker.kill()
        stage.failover(self.name, active, since, stage.pair.session_timeout_s + FAILOVER_SLACK_S)
        stage.hold(1.0, 5.0)
        stage.mark(f"restart the broker of {short_name(active)}", recovery=True)
        broker.restart()
        stage.start_instance(active)


class DamagedSegment(Fault):
    """kill -9 of the active, then what a bad disk and a crash leave in its journal: one byte
    flipped in a record it has already stored, and a zero-filled next segment. It starts again
    (the leftover is no foreign file), sets the damaged bytes aside and loses nothing else."""

    name = "damaged-segment"

    def apply(self, stage: Stage) -> None:
        active = stage.active()
        stage.mark(f"kill -9 {short_name(active)}, damage its journal")
        since = time.monotonic()
        active.kill()
        directory = Path(active.config["journal"]["dir"])
        flipped = flip_a_stored_byte(stage, directory, short_name(active))
        segments = sorted(directory.glob(f"*-{short_name(active)}.seg"))
        if segments:
            last = segments[-1].name
            (directory / f"{int(last[:8]) + 1:08d}{last[8:]}").write_bytes(bytes(64))
        stage.note(flipped=flipped, zero_filled=bool(segments))
        stage.failover(self.name, active, since, stage.pair.session_timeout_s + FAILOVER_SLACK_S)
        stage.hold(0.5, 2.0)
        stage.start_instance(active)


def flip_a_stored_byte(stage: Stage, directory: Path, writer: str) -> bool:
    """Flips a byte in the middle of a record of `writer` that the database already holds (a
    record not yet stored would be lost to the damage, which the ledger check would count)."""
    with Journal.open_readonly(directory) as journal:
        entries = [e for e in journal.read() if e.position.segment.endswith(f"-{writer}.seg")]
    ids = {from_record(e.data).report_id: e for e in entries}
    sink = Sink(stage.pair.db_url, cluster="chaos-fault", journal="chaos-fault")
    try:
        stored = [i for i, n in sink.report_id_counts(ids).items() if n == 1]
    finally:
        sink.close()
    if not stored:
        return False
    entry = ids[stage.rng.choice(sorted(stored))]
    path = directory / entry.position.segment
    try:
        with path.open("r+b") as f:
            f.seek(entry.position.byte - len(entry.data) // 2 - 1)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0x5A]))
    except FileNotFoundError:
        return False  # released by the other instance meanwhile
    return True


class DuplicateInstance(Fault):
    """A second process started with the active's name and journal: it must exit at once (one
    line naming the holder's pid, exit 1), and the pair go on undisturbed."""

    name = "duplicate-instance"

    def apply(self, stage: Stage) -> None:
        active = stage.active()
        stage.mark(f"second {short_name(active)}")
        config = {k: dict(v) if isinstance(v, dict) else v for k, v in active.config.items()}
        del config["http"]
        # Run as the active runs: a process, or a container of the same image.
        twin = type(active)(Path(active.workdir).with_name(f"{active.workdir.name}-twin"), config)
        holder = active.server_pid
        try:
            twin.start(timeout_s=60)
        except HarnessError:
            refused = f"already running as pid {holder}" in twin.log_tail(5)
        else:
            refused = False
            twin.kill()
        finally:
            twin.remove()
        stage.note(refused=refused)
        if not refused:
            raise AssertionError(f"a second {short_name(active)} was not refused")


class RestartOrder(Fault):
    """The active killed -9, the other takes over, then both restart in a drawn order (the
    survivor stopped cleanly): each instance drains its own journal whatever its role and the
    order it came back in, and the pair settles with nothing stranded."""

    name = "restart-order"

    def apply(self, stage: Stage) -> None:
        active = stage.active()
        survivor = next(i for i in stage.pair.instances if i is not active)
        stage.mark(f"kill -9 {short_name(active)}")
        since = time.monotonic()
        active.kill()
        limit_s = stage.pair.session_timeout_s + FAILOVER_SLACK_S
        stage.failover(self.name, active, since, limit_s)
        stage.hold(0.5, 3.0)
        order = stage.rng.choice(["killed first", "survivor first", "survivor only"])
        stage.note(order=order)
        if order == "killed first":
            stage.start_instance(active)
            stage.hold(0.5, 3.0)
        stage.mark(f"SIGTERM {short_name(survivor)}")
        survivor.stop()
        stage.start_instance(survivor)
        if order != "killed first":
            stage.hold(0.5, 3.0)
            stage.start_instance(active)


class PoisonReport(Fault):
    """Reports no database can store sent to the active's broker amid the flow: an 8 KB
    `call_id` (refused at decode) and one only the database refuses (`database_poison`). Each
    is rejected once into rejected_reports and the flow goes on: the ledger check at the end
    counts every ordinary report sent around them."""

    name = "poison-report"

    def apply(self, stage: Stage) -> None:
        broker = stage.pair.brokers[short_name(stage.active())]
        queues = queues_by_kind(stage.pair.queues)
        ids = [f"poison-{uuid.uuid4().hex}" for _ in range(2)]
        cdr = sample_report("cdr", stage.rng) | {"call_id": stage.rng.randbytes(4096).hex()}
        sq, _ = database_poison(stage.pair.db_url, stage.rng)
        client = ReportClient([broker.host], in_flight=10)
        try:
            client.send_raw(f"/queue/{queues['cdr']}", json.dumps(cdr).encode(), report_id=ids[0])
            client.send_raw(f"/queue/{queues['sq']}", sq, report_id=ids[1])
            client.flush()
        finally:
            client.close()
        stage.mark("2 poison reports")
        deadline = time.monotonic() + 60
        rejected = 0
        while time.monotonic() < deadline:
            rejected = rejected_count(stage.pair.db_url, ids)
            if rejected == len(ids):
                break
            time.sleep(0.5)  # polling the database, not synchronising the run
        stage.note(poison_rejected=rejected, poison_sent=len(ids))
        if rejected != len(ids):
            # Counted among the run's errors: a poison report that is not rejected in a minute
            # is stuck in front of the flow, or was stored.
            raise AssertionError(f"{rejected} of {len(ids)} poison reports rejected after 60 s")


def rejected_count(db_url: str, ids: list[str]) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            query = select(func.count()).where(rejected_reports.c.report_id.in_(ids))
            return conn.scalar(query) or 0
    except SQLAlchemyError:
        return 0  # the database is down: counted on the next look
    finally:
        engine.dispose()


ALL_FAULTS: tuple[Fault, ...] = (
    KillActive(),
    TermActive(),
    PauseActive(),
    ZooKeeperRestart(),
    DatabaseOutage(),
    BrokerRestart(),
    ZooKeeperPathDark(),
    HostDown(),
    RestartOrder(),
    PoisonReport(),
    DamagedSegment(),
    DuplicateInstance(),
)


def faults_for(mode: str, faults: tuple[Fault, ...] = ALL_FAULTS) -> tuple[Fault, ...]:
    return tuple(f for f in faults if mode in f.modes)


def fenced_writes(instance: Instance) -> float:
    """reporting_fenced_writes_total of the instance (0 when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://{instance.listen}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("reporting_fenced_writes_total "):
            return float(line.split()[1])
    return 0.0
