"""ChaosRun: a pair with reports flowing, faults in a seeded random order, then the ledger check.

One run: start the pair and a producer; then, round after round, wait a random while, draw the
next fault (from a shuffled deck, so every kind comes up before any repeats), apply it, and wait
for the pair to settle (the pair says what settled means; reports being stored again). At the
end everything is healed, the producer flushed, the drain awaited, the ledger compared with the
database, and the brokers checked for anything stranded. A sampler polls both instances' /status
every 50 ms throughout and, where one store has one writer, flags any moment with two actives.
The seed fixes the faults, their order and their durations; the interleaving with the servers'
own timing is what each run explores.

The runner knows nothing of pytest: it returns a `ChaosResult` for the caller to judge.
"""

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from reporting.harness.flow import Flow
from reporting.harness.instance import Instance
from reporting.harness.pair import Pair, brief, short_name
from reporting.harness.waiting import holds_within
from reporting.ledger import read_ledger
from storage.database import Sink
from tests.chaos import timeline
from tests.chaos.faults import Fault, faults_for
from tests.chaos.result import ChaosResult, Failover, FaultRecord, Marker
from tests.chaos.sampler import Sampler

# How long the pair may take to come back to rest, reports being stored, after a fault.
SETTLE_TIMEOUT_S = 90.0
# How long a failover may take before it counts as never having happened.
FAILOVER_TIMEOUT_S = 60.0
# How long the drain may take once everything is healed and the producer has stopped.
DRAIN_TIMEOUT_S = 180.0
# How long the brokers may take to show empty queues once the ledger is all stored.
BROKER_EMPTY_TIMEOUT_S = 60.0
POLL_S = 0.02


class ChaosRun:
    """One seeded run against `pair` (built, not started; the caller closes it).

    `rounds` faults are applied, or as many as fit in `duration_s` when that is given. Between
    faults the pair runs undisturbed for a random time in `gap_s`. The ledger, the timeline JSON
    and (with `plot`) the PNG are written to `workdir`.
    """

    def __init__(
        self,
        seed: int,
        *,
        pair: Pair,
        workdir: Path,
        faults: Sequence[Fault] | None = None,
        rounds: int = 4,
        duration_s: float | None = None,
        rate_per_s: float = 150.0,
        gap_s: tuple[float, float] = (1.0, 4.0),
        plot: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.pair = pair
        self.workdir = Path(workdir)
        self.faults = tuple(faults) if faults is not None else faults_for(pair.mode)
        unfit = [f.name for f in self.faults if pair.mode not in f.modes]
        if unfit or not self.faults:
            raise ValueError(f"faults not for a {pair.mode} pair: {unfit or 'none given'}")
        self.rounds = rounds
        self.duration_s = duration_s
        # Started with the instances; a broker restart takes a while on a loaded machine, the
        # client keeps trying that long.
        self.producer = Flow(
            pair.producer_hosts,
            self.workdir / "ledger",
            queues=pair.queues,
            count=None,
            rate=rate_per_s,
            run_tag=f"s{seed}",
            rng=random.Random(seed),
            reconnect_timeout_s=120,
        )
        self.gap_s = gap_s
        self.plot = plot
        self.log = log
        self.result = ChaosResult(seed=seed, mode=pair.mode, rounds=0)
        self._t0 = time.monotonic()
        self.sampler = Sampler(
            pair.instances, clock=self.clock, exclusive=pair.exclusive, receipted=self._receipted
        )
        self._deck: list[Fault] = []
        self._current: FaultRecord | None = None

    def clock(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self._t0

    def _receipted(self) -> int:
        return self.producer.confirmed

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> ChaosResult:
        self.log(
            f"chaos: seed {self.seed}, {self.pair.mode} pair, "
            + (f"{self.duration_s:.0f} s" if self.duration_s else f"{self.rounds} rounds")
            + f", faults {', '.join(f.name for f in self.faults)}"
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._t0 = time.monotonic()
        self.sampler.start()
        try:
            self._run_faults()
        finally:
            self._heal_all()
            self._finish()
        return self.result

    def _run_faults(self) -> None:
        for instance in self.pair.instances:
            instance.start()
        self.producer.start()
        if not self._settle("start-up"):
            return
        deadline = self._t0 + self.duration_s if self.duration_s else None
        while True:
            if deadline is None and self.result.rounds >= self.rounds:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            self.hold(*self.gap_s)
            fault = self._draw()
            self.result.rounds += 1
            receipted = self.producer.confirmed
            self.log(
                f"chaos: {self.clock():7.1f} s  round {self.result.rounds}: {fault.name} "
                f"({receipted} reports receipted so far)"
            )
            if not self._apply(fault) or not self._settle(fault.name):
                return
            if self.producer.error is not None:
                self.result.errors.append(f"producer: {self.producer.error!r}")
                return

    def _draw(self) -> Fault:
        if not self._deck:
            self._deck = list(self.faults)
            self.rng.shuffle(self._deck)
        return self._deck.pop()

    def _apply(self, fault: Fault) -> bool:
        """Apply the fault; False if it failed half-way (the run then heals and checks)."""
        record = FaultRecord(fault.name, self.clock())
        self.result.faults.append(record)
        self._current = record
        try:
            fault.apply(self)
        except Exception as exc:  # a harness failure: reported, then healed like any fault
            record.error = brief(exc)
            self.result.errors.append(f"{fault.name}: {record.error}")
            self.log(f"chaos: {fault.name} failed: {exc!r}")
            return False
        finally:
            record.t_end = self.clock()
            self._current = None
        return True

    def _settle(self, after: str) -> bool:
        """Wait for one active, the rest standby, and the active storing reports."""
        if holds_within(self._settled, SETTLE_TIMEOUT_S, every_s=POLL_S):
            active = self._active_name()
            before = self.sampler.latest()[active].stored or 0
            producing = self.producer.alive
            if not producing or holds_within(
                lambda: (self.sampler.latest()[active].stored or 0) > before,
                SETTLE_TIMEOUT_S,
                every_s=POLL_S,
            ):
                return True
            self.result.unsettled.append(f"{after}: {active} active but storing nothing")
        else:
            self.result.unsettled.append(f"{after}: roles {self.sampler.roles()}")
        self.log(f"chaos: pair did not settle after {after}: {self.result.unsettled[-1]}")
        return False

    def _settled(self) -> bool:
        return self.pair.is_settled(self.sampler.roles())

    def _active_name(self) -> str:
        return next(name for name, role in self.sampler.roles().items() if role == "active")

    # -- the Stage the faults act on ----------------------------------------------------------

    def active(self) -> Instance:
        if not holds_within(self._settled, SETTLE_TIMEOUT_S, every_s=POLL_S):
            raise RuntimeError(f"no settled pair to inject into: {self.sampler.roles()}")
        name = self._active_name()
        return next(i for i in self.pair.instances if short_name(i) == name)

    def mark(self, label: str, *, recovery: bool = False) -> None:
        self.result.markers.append(Marker(self.clock(), label, recovery))
        self.log(f"chaos: {self.clock():7.1f} s    {label}")

    def hold(self, low_s: float, high_s: float) -> float:
        seconds = self.rng.uniform(low_s, max(low_s, high_s))
        time.sleep(seconds)  # the fault's (or the quiet spell's) duration, not a synchronisation
        return seconds

    def failover(self, fault: str, old: Instance, since: float, limit_s: float) -> None:
        old_name = short_name(old)

        def successor() -> str | None:
            roles = self.sampler.roles()
            return next((n for n, r in roles.items() if r == "active" and n != old_name), None)

        took_over = holds_within(
            lambda: successor() is not None, FAILOVER_TIMEOUT_S, every_s=POLL_S
        )
        # Timed by the samples, not by when this wait ended: stopping the old process may have
        # kept the fault busy past the takeover.
        since_t = since - self._t0
        first = self.sampler.first_since(
            since_t, lambda s: s.role == "active" and s.name != old_name
        )
        if not took_over or first is None:
            first = None
        seconds = first.t - since_t if first is not None else None
        new = first.name if first is not None else None
        at = first.t if first is not None else self.clock()
        record = Failover(fault, old_name, new, seconds, limit_s, at)
        self.result.failovers.append(record)
        took = f"{seconds:.2f} s" if seconds is not None else "never"
        self.log(f"chaos: {self.clock():7.1f} s    failover {old_name} -> {new} in {took}")

    def wait_role(self, instance: Instance, role: str, timeout_s: float) -> bool:
        name = short_name(instance)
        return holds_within(
            lambda: self.sampler.roles().get(name) == role, timeout_s, every_s=POLL_S
        )

    def freeze(self, instance: Instance) -> None:
        self.sampler.freeze(instance)
        instance.pause()

    def thaw(self, instance: Instance) -> None:
        instance.resume()
        self.sampler.thaw(instance)

    def start_instance(self, instance: Instance) -> None:
        self.mark(f"start {short_name(instance)}", recovery=True)
        instance.start()

    def note(self, **details: object) -> None:
        if self._current is not None:
            self._current.details.update(details)
        if "fenced_writes" in details:
            self.result.fenced_writes += float(details["fenced_writes"])  # type: ignore[arg-type]

    # -- the end ------------------------------------------------------------------------------

    def _heal_all(self) -> None:
        """Undo whatever a fault left behind, e.g. when it raised half-way."""
        healed = []
        for proxy in self.pair.zookeeper_paths.values():
            proxy.heal()
        for service in [*self.pair.services(), *self.pair.instances]:
            name = short_name(service) if isinstance(service, Instance) else service.name
            try:
                if service.is_paused():
                    if isinstance(service, Instance):
                        self.thaw(service)
                    else:
                        service.resume()
                    healed.append(f"resumed {name}")
                if not service.is_running():
                    service.start()
                    healed.append(f"started {name}")
            except Exception as exc:  # reported; the check goes on with what runs
                self.result.errors.append(f"healing {name}: {brief(exc)}")
        if healed:
            self.mark(f"healed: {', '.join(healed)}", recovery=True)

    def _finish(self) -> None:
        result = self.result
        try:
            self.producer.stop()
            if self.producer.error is not None:
                message = f"producer: {self.producer.error!r}"
                if message not in result.errors:
                    result.errors.append(message)
            self.mark("producer stopped; draining", recovery=True)
            self._verify()
            self._check_brokers_empty()
        finally:
            self.sampler.stop()
            result.duration_s = self.clock()
            result.ticks = self.sampler.ticks
            result.two_active_samples = list(self.sampler.two_active)
            result.timeline_json = timeline.write_json(self, self.workdir / "timeline.json")
            if self.plot:
                result.timeline_png = timeline.plot(self, self.workdir / "timeline.png")
            self.log(result.summary())

    def _verify(self) -> None:
        ledger = self.workdir / "ledger"
        ids = read_ledger(ledger).ids if ledger.exists() else frozenset()
        self.result.sent = len(ids)
        sink = Sink(self.pair.db_url, cluster="chaos-verify", journal="chaos-verify")
        try:

            def drained() -> bool:
                try:
                    if sink.count_reports() < len(ids):
                        return False
                except Exception:  # the database is coming back; ask again
                    return False
                return self.pair.is_drained(self.sampler.roles(), self.sampler.pending())

            if ids and not holds_within(drained, DRAIN_TIMEOUT_S, every_s=0.5):
                self.log("chaos: the drain did not finish in time; checking what is stored")
            counts = sink.report_id_counts(ids)
        finally:
            sink.close()
        self.result.stored = sum(1 for n in counts.values() if n >= 1)
        self.result.missing = sorted(i for i in ids if counts.get(i, 0) == 0)
        self.result.duplicated = sorted(i for i, n in counts.items() if n > 1)

    def _check_brokers_empty(self) -> None:
        """Nothing left in any queue of any broker: what was receipted was all consumed."""
        left = self.pair.left_in_brokers
        if not holds_within(lambda: not left(), BROKER_EMPTY_TIMEOUT_S, every_s=1.0):
            self.result.stranded = [f"{q}: {what}" for q, what in left().items()]
