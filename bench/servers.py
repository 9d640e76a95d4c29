"""The servers one benchmark run shares, and the configs of the instances it starts on them.

One ActiveMQ, one ZooKeeper and one PostgreSQL for the whole run; every measurement takes its own
queue names (a prefix), its own database and its own journal directory, as the integration tests
do, so one measurement's leftovers cannot count in another's figures.
"""

import os
import platform
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reporting.harness import ActiveMQ, Postgres, ZooKeeper
from reporting.harness.group import Group
from reporting.harness.instance import Instance, instance_config
from reporting.harness.pair import Pair, build_pair
from storage.reports import KINDS

SESSION_TIMEOUT_S = 2.0
_STARTED = time.monotonic()


def say(message: str) -> None:
    """Progress on stdout, stamped with the seconds since the run began."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", flush=True)


def best_of(runs: list[dict[str, Any]], rate: str = "reports_per_s") -> dict[str, Any]:
    """Of one measurement's runs, the least disturbed: the best `rate`, and beside it the lowest
    CPU per report where runs have one (a busy or slowed machine only ever adds to either), with
    every run kept."""
    best = dict(max(runs, key=lambda run: run[rate]))
    cpu = [run["cpu_us_per_report"] for run in runs if "cpu_us_per_report" in run]
    if cpu:
        best["cpu_us_per_report"] = min(cpu)
    return best | {"runs": runs}


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    except (OSError, ValueError):
        nproc = os.cpu_count() or 0
    return {
        "nproc": nproc,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": model,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def queues(prefix: str) -> list[str]:
    return [f"{prefix}gvp.reporting.{kind}" for kind in KINDS]


def destination(prefix: str, kind: str) -> str:
    return f"/queue/{prefix}gvp.reporting.{kind}"


class Servers:
    """ActiveMQ, ZooKeeper and PostgreSQL under `root`; `stop` ends every one that started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.activemq = ActiveMQ(root / "activemq")
        self.zookeeper = ZooKeeper(root / "zookeeper")
        self.postgres = Postgres(root / "postgres")
        self._started: list[Any] = []

    def start(self) -> None:
        for service in (self.postgres, self.zookeeper, self.activemq):
            say(f"starting {service.name}")
            service.start()
            self._started.append(service)

    def stop(self) -> None:
        for service in reversed(self._started):
            try:
                service.stop(timeout_s=20)
            except Exception as exc:  # every other service must still be stopped
                say(f"stopping {service.name}: {exc}")
        self._started.clear()

    def workdir(self, name: str) -> Path:
        path = self.root / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    @staticmethod
    def prefix() -> str:
        return f"b{uuid.uuid4().hex[:8]}."

    def database(self, name: str) -> str:
        return self.postgres.create_database(f"bench_{name}_{uuid.uuid4().hex[:6]}")

    def config(
        self,
        name: str,
        *,
        mode: str,
        prefix: str,
        db_url: str,
        journal_dir: Path,
        hosts: list[str] | None = None,
        cluster: str | None = None,
        role: str = "primary",
    ) -> dict[str, Any]:
        """An instance config with the product's defaults for every batching knob."""
        ha: dict[str, Any] = {"mode": mode}
        if mode != "standalone":
            ha |= {
                "role": role,
                "zookeeper": self.zookeeper.hosts,
                "cluster": cluster or f"/bench/{uuid.uuid4().hex}",
                "session_timeout": SESSION_TIMEOUT_S,
            }
        return instance_config(
            name,
            ha=ha,
            hosts=hosts or [self.activemq.host],
            queues=queues(prefix),
            db_url=db_url,
            journal_dir=journal_dir,
        )

    def pair(
        self, *, mode: str, prefix: str, db_url: str, brokers: list[ActiveMQ] | None = None
    ) -> Pair:
        """Two instances (rs-a, rs-b) of one cluster, with the product's defaults; shared mode
        on this run's broker, segregated on `brokers` (the primary's first)."""
        return build_pair(
            self.workdir(f"pair-{mode}"),
            mode=mode,
            brokers=brokers or [self.activemq],
            zookeeper=self.zookeeper,
            database=self.postgres,
            db_url=db_url,
            queues=queues(prefix),
            cluster=f"/bench/{uuid.uuid4().hex}",
            names=("rs-a", "rs-b"),
            session_timeout_s=SESSION_TIMEOUT_S,
        )

    def group(self, size: int, *, prefix: str, db_url: str) -> Group:
        """`size` group-mode instances (rs-0, rs-1, ...) of one cluster, built, not started."""
        group = Group(
            self.workdir(f"group-{size}"),
            broker_host=self.activemq.host,
            zookeeper_hosts=self.zookeeper.hosts,
            db_url=db_url,
            queues=queues(prefix),
            cluster=f"/bench/{uuid.uuid4().hex}",
            session_timeout_s=SESSION_TIMEOUT_S,
        )
        for index in range(size):
            group.add(f"rs-{index}")
        return group


def role_of(instance: Instance) -> str:
    status = instance.try_status(timeout_s=0.5)
    return status["role"] if status else "unreachable"


def stored_by(instances: Iterable[Instance]) -> int:
    """The reports the instances have stored, by their /status; one that does not answer adds 0."""
    return sum((i.try_status() or {}).get("stored", 0) for i in instances)


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a process in MB; (0, 0) once it is gone."""
    hwm = rss = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return hwm, rss
