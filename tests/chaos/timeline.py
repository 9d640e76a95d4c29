"""The timeline of a chaos run: JSON for tools, a PNG for people.

The PNG has two panels over one time axis: reports stored per second (summed over the instances'
`stored` counters, which restart from 0 with their process) beside reports receipted per second,
and each instance's role as a coloured band. Faults are red vertical lines, their undoing green,
each labelled; a triangle marks each failover with the time it took.
"""

import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.chaos.runner import ChaosRun

ROLE_COLOURS = {
    "active": "#2ca02c",
    "standby": "#9ecae1",
    "paused": "#ff7f0e",
    "unreachable": "#d62728",
}


def write_json(run: "ChaosRun", path: Path) -> Path:
    result = run.result
    document = {
        "seed": result.seed,
        "mode": result.mode,
        "duration_s": round(result.duration_s, 3),
        "sent": result.sent,
        "stored": result.stored,
        "missing": result.missing[:100],
        "duplicated": result.duplicated[:100],
        "unsettled": result.unsettled,
        "errors": result.errors,
        "faults": [asdict(f) for f in result.faults],
        "failovers": [asdict(f) for f in result.failovers],
        "markers": [asdict(m) for m in result.markers],
        "two_active": [[asdict(s) for s in tick] for tick in result.two_active_samples],
        # Compact rows: t, name, role, stored, epoch, pending.
        "samples": [
            [round(s.t, 3), s.name, s.role, s.stored, s.epoch, s.pending]
            for s in run.sampler.samples
        ],
        "receipts": [[round(t, 3), n] for t, n in run.sampler.receipts],
    }
    path.write_text(json.dumps(document))
    return path


def stored_per_second(run: "ChaosRun") -> tuple[list[int], list[int]]:
    """Seconds since the start, and reports stored in each (counter restarts count from 0)."""
    last: dict[str, int] = {}
    per_second: dict[int, int] = defaultdict(int)
    for sample in run.sampler.samples:
        if sample.stored is None:
            continue
        previous = last.get(sample.name, 0)
        grown = sample.stored - previous if sample.stored >= previous else sample.stored
        per_second[int(sample.t)] += grown
        last[sample.name] = sample.stored
    return _series(per_second)


def receipted_per_second(run: "ChaosRun") -> tuple[list[int], list[int]]:
    per_second: dict[int, int] = defaultdict(int)
    previous = 0
    for t, n in run.sampler.receipts:
        per_second[int(t)] += max(0, n - previous)
        previous = n
    return _series(per_second)


def _series(per_second: dict[int, int]) -> tuple[list[int], list[int]]:
    if not per_second:
        return [], []
    seconds = list(range(max(per_second) + 1))
    return seconds, [per_second.get(s, 0) for s in seconds]


def role_bands(run: "ChaosRun") -> dict[str, list[tuple[float, float, str]]]:
    """Per instance: (start, length, role) spans of consecutive samples with one role."""
    bands: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    open_span: dict[str, tuple[float, str]] = {}
    last_t: dict[str, float] = {}
    for sample in run.sampler.samples:
        start = open_span.get(sample.name)
        if start is None:
            open_span[sample.name] = (sample.t, sample.role)
        elif start[1] != sample.role:
            bands[sample.name].append((start[0], sample.t - start[0], start[1]))
            open_span[sample.name] = (sample.t, sample.role)
        last_t[sample.name] = sample.t
    for name, (t, role) in open_span.items():
        bands[name].append((t, max(last_t[name] - t, 0.05), role))
    return dict(bands)


def plot(run: "ChaosRun", path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.patches import Patch

    result = run.result
    names = sorted({s.name for s in run.sampler.samples})
    figure, (rates, roles) = pyplot.subplots(
        2,
        1,
        sharex=True,
        figsize=(max(12.0, min(60.0, result.duration_s / 8)), 7),
        gridspec_kw={"height_ratios": [3, 1]},
    )
    seconds, stored = stored_per_second(run)
    rates.step(seconds, stored, where="post", color="#1f77b4", label="stored / s")
    seconds, receipted = receipted_per_second(run)
    rates.step(seconds, receipted, where="post", color="#7f7f7f", alpha=0.7, label="receipted / s")
    rates.set_ylabel("reports per second")
    rates.legend(loc="upper right", fontsize=8)
    top = max([*stored, *receipted, 1])
    rates.set_ylim(0, top * 1.6)

    bands = role_bands(run)
    for row, name in enumerate(names):
        spans = bands.get(name, [])
        roles.broken_barh(
            [(start, length) for start, length, _ in spans],
            (row - 0.4, 0.8),
            facecolors=[ROLE_COLOURS.get(role, "#000000") for _, _, role in spans],
        )
    roles.set_yticks(range(len(names)), names)
    roles.set_ylim(-0.6, len(names) - 0.4)
    roles.set_xlabel("seconds since the start")
    roles.legend(
        handles=[Patch(color=c, label=r) for r, c in ROLE_COLOURS.items()],
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
        ncol=len(ROLE_COLOURS),
        frameon=False,
    )

    for marker in result.markers:
        colour = "#2ca02c" if marker.recovery else "#d62728"
        style = ":" if marker.recovery else "--"
        for axes in (rates, roles):
            axes.axvline(marker.t, color=colour, linestyle=style, linewidth=0.9)
        rates.text(
            marker.t,
            top * 1.58,
            f" {marker.label}",
            rotation=90,
            fontsize=7,
            color=colour,
            va="top",
            ha="right",
        )
    for failover in result.failovers:
        if failover.new is None or failover.seconds is None:
            continue
        row = names.index(failover.new) if failover.new in names else 0
        roles.plot([failover.t], [row], marker="v", color="black", markersize=6)
        roles.annotate(
            f"{failover.seconds:.2f} s",
            (failover.t, row),
            xytext=(3, 6),
            textcoords="offset points",
            fontsize=7,
        )

    verdict = "ok" if result.ok else "FAILED"
    rates.set_title(
        f"chaos seed {result.seed} ({result.mode}): {verdict} - {result.sent} receipted, "
        f"{len(result.missing)} missing, {len(result.duplicated)} duplicated, "
        f"{len(result.two_active_samples)} ticks with two actives",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path
