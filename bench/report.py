"""The results table (markdown) from bench.json."""

from pathlib import Path
from typing import Any


def _rate(figure: dict[str, Any], key: str = "reports_per_s") -> str:
    return f"{figure[key]:,.0f}/s" if key in figure else "-"


def _cpu(figure: dict[str, Any]) -> str:
    if "cpu_us_per_report" not in figure:
        return ""
    cores = f", {figure['cores']:.2f} cores" if "cores" in figure else ""
    return f", {figure['cpu_us_per_report']:.0f} µs CPU/report{cores}"


def _cpu_ratio(figure: dict[str, Any], raw: dict[str, Any]) -> str:
    if "cpu_us_per_report" not in figure or "cpu_us_per_report" not in raw:
        return ""
    return f", CPU server/raw {figure['cpu_us_per_report'] / raw['cpu_us_per_report']:.1f}"


def _limit(figure: dict[str, Any]) -> str:
    return f", server/limit {figure['ratio_to_limit']:.2f}" if "ratio_to_limit" in figure else ""


# At half the end-to-end maximum rate.
LATENCY_P99_MS = 250


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _of(figure: dict[str, Any]) -> str:
    """Which of its runs a figure is: the best rate and, beside it, the lowest CPU per report."""
    runs = len(figure.get("runs", ()))
    return f" (best of {runs} runs)" if runs > 1 else ""


def _throughput(m: dict[str, Any]) -> list[str]:
    raw, naive = m["raw"], m["naive"]
    rows = [
        f"| throughput: raw drain (receive + cumulative ack, store nothing){_of(raw)} "
        f"| {_rate(raw)}{_cpu(raw)} | | | baseline |",
        f"| throughput: naive (transaction + ack per report, {naive['reports']:,} reports) "
        f"| {_rate(naive)} | | | baseline |",
    ]
    if "limit" in m:
        rows.insert(
            1,
            "| throughput: raw drain, a consumer per queue in its own process (the machine's "
            f"limit) | {_rate(m['limit'])}{_cpu(m['limit'])} | | | baseline |",
        )
    for mode in ("standalone", "shared"):
        old = m.get(f"{mode}_baseline")
        if old and "cpu_us_per_report" in old and "cpu_us_per_report" in m[mode]:
            ratio = m[mode]["cpu_us_per_report"] / old["cpu_us_per_report"]
            rows.append(
                f"| throughput: server {mode} from `{m['baseline_code']}` (the earlier code)"
                f"{_of(old)} "
                f"| {_rate(old)}{_cpu(old)} | CPU now/then {ratio:.2f} | <= 0.5 "
                f"| {_met(ratio <= 0.5)} |"
            )
    for mode in ("standalone", "shared"):
        f = m[mode]
        ok = f["ratio_to_raw"] >= 0.8 and f["ratio_to_naive"] >= 10
        rows.append(
            f"| throughput: server {mode}, {m['reports']:,} reports into PostgreSQL{_of(f)} "
            f"| {_rate(f)}{_cpu(f)} | server/raw {f['ratio_to_raw']:.2f}, "
            f"server/naive {f['ratio_to_naive']:.1f}{_limit(f)}{_cpu_ratio(f, raw)} "
            "| >= 0.8 and >= 10 "
            f"| {_met(ok)} |"
        )
    return rows


def _scaling(m: dict[str, Any]) -> list[str]:
    rows = [
        f"| scaling: raw drain (one consumer, receive + cumulative ack) | {_rate(m['raw'])} "
        "| | | baseline |"
    ]
    for g in m["groups"]:
        rows.append(
            f"| scaling: group of {g['instances']}, {g['reports']:,} reports after the shares "
            f"were taken | {_rate(g)} | group/raw {g['ratio_to_raw']:.2f} | - | - |"
        )
    return rows


def _replay(m: dict[str, Any]) -> list[str]:
    d, c = m["drain"], m["copy"]
    return [
        f"| replay: journal of {d['records']:,} records drained (Drainer + Sink){_of(d)} "
        f"| {_rate(d, 'records_per_s')} | /COPY {m['ratio_to_copy']:.2f} | >= 0.8 "
        f"| {_met(m['ratio_to_copy'] >= 0.8)} |",
        f"| replay: plain COPY of the same rows{_of(c)} | {_rate(c, 'records_per_s')} "
        "| | | baseline |",
    ]


def _failover(m: dict[str, Any]) -> list[str]:
    rows = []
    target = m["target_p99_s"]
    for mode in ("shared", "segregated"):
        f = m.get(mode)
        if not f or "p50_s" not in f["to_active"]:
            continue
        for key, what in (("to_active", "other active"), ("to_first_stored", "first new stored")):
            s = f[key]
            ok = s["p99_s"] <= target if key == "to_active" else None
            rows.append(
                f"| failover {mode} ({s['n']} of {s['n'] + len(f.get('failed_rounds', []))} "
                f"rounds): kill -9 to {what} "
                f"| p50 {s['p50_s']:.2f} s, p99 {s['p99_s']:.2f} s | max {s['max_s']:.2f} s "
                f"| {'p99 <= ' + format(target, '.0f') + ' s' if ok is not None else '-'} "
                f"| {_met(ok) if ok is not None else '-'} |"
            )
    return rows


def _memory(m: dict[str, Any]) -> list[str]:
    rows = []
    for key, f in m.items():
        if not isinstance(f, dict) or "holding" not in f:
            continue
        held, drained = f["holding"], f.get("drained", {})
        peak = max(held["vm_hwm_mb"], drained.get("vm_hwm_mb", 0))
        rows.append(
            f"| memory: backlog {int(key):,} + {f['live_reports']:,} live, database down "
            f"| VmHWM {held['vm_hwm_mb']:.0f} MB | | < 150 MB | {_met(held['vm_hwm_mb'] < 150)} |"
        )
        if drained:
            rows.append(
                f"| memory: then draining it | VmHWM {drained['vm_hwm_mb']:.0f} MB "
                f"| drain {drained['records_per_s']:,.0f} records/s | < 150 MB "
                f"| {_met(peak < 150)} |"
            )
    return rows


def _latency(m: dict[str, Any]) -> list[str]:
    return [
        f"| latency send to stored at {m['achieved_send_rate_reports_per_s']:,.0f}/s "
        f"(half of the {m['max_rate_reports_per_s']:,.0f}/s end-to-end maximum) "
        f"| p50 {m['p50_ms']:.0f} ms, p99 {m['p99_ms']:.0f} ms | max {m['max_ms']:.0f} ms "
        f"| p99 <= {LATENCY_P99_MS} ms | {_met(m['p99_ms'] <= LATENCY_P99_MS)} |"
    ]


_ROWS = {
    "throughput": _throughput,
    "scaling": _scaling,
    "replay": _replay,
    "failover": _failover,
    "memory": _memory,
    "latency": _latency,
}


def write_markdown(doc: dict[str, Any], path: Path) -> str:
    machine = doc["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"- command: `{doc['command']}` ({doc['size']} sizes)",
        f"- date: {doc['when']}",
        f"- machine: {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_gib']} GiB, load average at start {machine['load_avg_at_start']}, "
        f"Python {machine['python']}, {machine['platform']}",
        "- servers: ActiveMQ, ZooKeeper and PostgreSQL 15 (fsync on) from reporting.harness, on "
        "the same machine as the server and the load; each figure's baseline ran in the same run",
        "",
        "| measurement | figure | beside it | target | met |",
        "|---|---:|---|---|---|",
    ]
    for name, rows in _ROWS.items():
        m = doc["measurements"].get(name)
        if m is None:
            continue
        if "error" in m:
            first_line = m["error"].splitlines()[0] if m["error"] else "error"
            lines.append(f"| {name} | failed: {first_line} | | | |")
            continue
        try:
            lines += rows(m)
        except KeyError as exc:
            lines.append(f"| {name} | incomplete result (no {exc}) | | | |")
    prof = doc["measurements"].get("profile")
    if prof and "own" in prof:
        lines += [
            "",
            f"Profile of the standalone server draining a backlog ({prof['samples']:,} py-spy "
            f"samples of the thread holding the interpreter lock; `{prof.get('file', '')}`):",
            "",
            "| own time | function | | total time | function |",
            "|---:|---|---|---:|---|",
        ]
        for own, total in zip(prof["own"], prof["total"], strict=False):
            lines.append(
                f"| {own['share']:.1%} | {own['function']} | "
                f"| {total['share']:.1%} | {total['function']} |"
            )
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text
