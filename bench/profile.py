"""A profile of the standalone server's hot path: py-spy samples the server process while it
drains a backlog from the broker into PostgreSQL (consumer, journal and drainer all busy), taking
only the thread that holds the interpreter lock (`--gil`), so that the samples say where the
Python CPU time goes rather than where threads wait; they are summed per function: own time (the
function itself on top of the stack) and total time (anywhere on the stack).

The collapsed stacks are kept in bench/results/profile-standalone.txt for a flame graph.
"""

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.load import preload
from bench.servers import Servers, say, stored_by
from reporting.harness.instance import Instance
from reporting.harness.waiting import wait_until

RESULTS = Path(__file__).parent / "results"
TOP = 15


def _py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def summarise(collapsed: str) -> dict[str, Any]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        own[_short(frames[-1])] += count
        for name in {_short(f) for f in frames}:
            total[name] += count

    def top(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "share": round(n / samples, 3)}
            for name, n in counter.most_common(TOP)
        ]

    return {"samples": samples, "own": top(own), "total": top(total)}


def _short(frame: str) -> str:
    # py-spy frames read "function (path/to/file.py:line)"; the line differs per sample.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/main/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def run(servers: Servers, *, count: int) -> dict[str, Any]:
    py_spy = _py_spy()
    if py_spy is None:
        return {"error": "py-spy not installed: .venv/bin/pip install py-spy"}
    prefix = servers.prefix()
    say(f"  preloading {count:,} reports")
    preload(servers.activemq.host, prefix, count, id_prefix=f"prof-{prefix}")
    workdir = servers.workdir("profile")
    config = servers.config(
        "rs-prof",
        mode="standalone",
        prefix=prefix,
        db_url=servers.database("profile"),
        journal_dir=workdir / "journal",
    )
    instance = Instance(workdir / "rs-prof", config)
    out = RESULTS / "profile-standalone.txt"
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        instance.start()
        command = [py_spy, "record", "--pid", str(instance.pid), "--format", "raw", "--output"]
        # Only the thread holding the interpreter lock: where the Python CPU time goes.
        command += [str(out), "--rate", "200", "--nonblocking", "--gil"]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(
                lambda: stored_by([instance]) >= count, 600, "the backlog stored", every_s=0.2
            )
        finally:
            # On SIGINT py-spy stops sampling and writes what it has.
            spy.send_signal(signal.SIGINT)
            try:
                _, err = spy.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
    finally:
        instance.stop(timeout_s=15)
    if not out.exists():
        return {"error": f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}"}
    result = summarise(out.read_text())
    result["file"] = str(out.relative_to(Path(__file__).parent.parent))
    for row in result["own"][:10]:
        say(f"  own {row['share']:6.1%}  {row['function']}")
    return result
