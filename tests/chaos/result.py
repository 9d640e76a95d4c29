"""What a chaos run found: the faults and failovers, the ledger check, the breaches."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.sampler import Sample


@dataclass(frozen=True)
class Marker:
    t: float
    label: str
    recovery: bool


@dataclass
class FaultRecord:
    name: str
    t_start: float
    t_end: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Failover:
    fault: str
    old: str
    new: str | None  # None: no other instance became active within FAILOVER_TIMEOUT_S
    seconds: float | None
    limit_s: float
    t: float

    @property
    def late(self) -> bool:
        return self.seconds is None or self.seconds > self.limit_s


@dataclass
class ChaosResult:
    seed: int
    mode: str
    rounds: int
    duration_s: float = 0.0
    faults: list[FaultRecord] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    sent: int = 0  # distinct receipted ids in the ledger
    stored: int = 0  # of those, how many the database holds
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    two_active_samples: list[tuple[Sample, ...]] = field(default_factory=list)
    ticks: int = 0
    unsettled: list[str] = field(default_factory=list)  # what the pair did not recover from
    stranded: list[str] = field(default_factory=list)  # queues left non-empty at the end
    errors: list[str] = field(default_factory=list)  # faults or producer that raised
    fenced_writes: float = 0.0
    timeline_json: Path | None = None
    timeline_png: Path | None = None

    @property
    def late_failovers(self) -> list[Failover]:
        return [f for f in self.failovers if f.late]

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing doubled, never two actives, failovers in time, and the pair
        always recovered."""
        return not (
            self.missing
            or self.late_failovers
            or self.duplicated
            or self.two_active_samples
            or self.unsettled
            or self.stranded
            or self.errors
            or self.sent == 0
        )

    def summary(self) -> str:
        lines = [
            f"chaos seed {self.seed} ({self.mode}): {len(self.faults)} faults in "
            f"{self.duration_s:.0f} s; {self.sent} reports receipted, {self.stored} stored, "
            f"{len(self.missing)} missing, {len(self.duplicated)} duplicated; "
            f"{self.ticks} status ticks, {len(self.two_active_samples)} with two actives",
        ]
        for record in self.faults:
            extra = f" {record.details}" if record.details else ""
            error = f" ERROR {record.error}" if record.error else ""
            lines.append(
                f"  {record.t_start:7.1f}-{record.t_end:7.1f} s  {record.name}{extra}{error}"
            )
        for f in self.failovers:
            took = f"{f.seconds:.2f} s" if f.seconds is not None else "never"
            flag = "  LATE" if f.late else ""
            lines.append(f"  failover ({f.fault}): {f.old} -> {f.new} in {took}{flag}")
        lines += [f"  did not settle: {u}" for u in self.unsettled]
        lines += [f"  stranded: {u}" for u in self.stranded]
        lines += [f"  error: {e}" for e in self.errors]
        if self.missing:
            lines.append(f"  missing e.g. {self.missing[:5]}")
        if self.duplicated:
            lines.append(f"  duplicated e.g. {self.duplicated[:5]}")
        for tick in self.two_active_samples[:5]:
            lines.append(
                "  two actives: "
                + ", ".join(
                    f"{s.name}@{s.t:.2f}s epoch {s.epoch}" for s in tick if s.role == "active"
                )
            )
        if self.timeline_png:
            lines.append(f"  timeline: {self.timeline_png}")
        return "\n".join(lines)
