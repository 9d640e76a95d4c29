"""Memory: peak RSS (VmHWM) of a standalone server holding a backlog while the database is
down, then while it drains it, for two backlog sizes.

The backlog is a journal of N records written beforehand (as a server left it), plus live
reports taken from the broker while the database is down, so that the intake is part of the
peak. The database is reached through a TcpProxy that is not listening (connections refused)
until the drain starts. The drain rate through the server is recorded too.
"""

import time
from typing import Any

from bench.backlog import build
from bench.load import preload
from bench.servers import Servers, peak_rss_mb, say, stored_by
from reporting.harness import TcpProxy
from reporting.harness.instance import Instance
from reporting.harness.waiting import wait_until

HOLD_S = 5.0


def _one(servers: Servers, backlog: int, live: int) -> dict[str, Any]:
    prefix = servers.prefix()
    db_url = servers.database(f"memory_{backlog}")
    workdir = servers.workdir(f"memory-{backlog}")
    build(servers.root, workdir / "journal", backlog)
    # Not listening yet: the server finds the database down from its start.
    proxy = TcpProxy("127.0.0.1", servers.postgres.port)
    proxied_url = db_url.replace(f":{servers.postgres.port}/", f":{proxy.port}/")
    config = servers.config(
        "rs-mem",
        mode="standalone",
        prefix=prefix,
        db_url=proxied_url,
        journal_dir=workdir / "journal",
    )
    instance = Instance(workdir / "rs-mem", config)
    total = backlog + live
    result: dict[str, Any] = {"backlog_records": backlog, "live_reports": live}
    try:
        instance.start()
        pid = instance.pid
        assert pid is not None
        say(f"  backlog {backlog:,}: sending {live:,} live reports while the database is down")
        preload(servers.activemq.host, prefix, live, id_prefix=f"mem-{prefix}")
        wait_until(
            lambda: (instance.try_status() or {}).get("journal", {}).get("pending", 0) >= total,
            120,
            "the live reports journalled",
            every_s=0.2,
        )
        time.sleep(HOLD_S)
        status = instance.status()
        hwm, rss = peak_rss_mb(pid)
        result["holding"] = {
            "vm_hwm_mb": round(hwm, 1),
            "vm_rss_mb": round(rss, 1),
            "pending": status["journal"]["pending"],
            "pending_bytes": status["journal"]["pending_bytes"],
            "database": status["database"],
        }
        say(f"  holding {status['journal']['pending']:,} records: VmHWM {hwm:.0f} MB")
        proxy.start()
        started = time.monotonic()
        deadline = started + max(300, total / 500)
        peak_rss = 0.0
        last_said = started
        while time.monotonic() < deadline:
            stored = stored_by([instance])
            peak_rss = max(peak_rss, peak_rss_mb(pid)[1])
            if stored >= total:
                break
            if time.monotonic() - last_said >= 10:
                last_said = time.monotonic()
                say(f"  drained {stored:,}/{total:,}, VmRSS {peak_rss_mb(pid)[1]:.0f} MB")
            time.sleep(0.2)
        else:
            raise TimeoutError(f"the server did not drain {total} records")
        seconds = time.monotonic() - started
        hwm, rss = peak_rss_mb(pid)
        result["drained"] = {
            "vm_hwm_mb": round(hwm, 1),
            "vm_rss_mb": round(rss, 1),
            "max_sampled_rss_mb": round(peak_rss, 1),
            "seconds": round(seconds, 1),
            "records_per_s": total / seconds,
        }
        say(f"  drained in {seconds:.0f} s: VmHWM {hwm:.0f} MB")
    finally:
        instance.stop(timeout_s=15)
        proxy.stop()
    return result


def run(servers: Servers, *, backlogs: tuple[int, ...], live: int) -> dict[str, Any]:
    result: dict[str, Any] = {"target_mb": 150}
    for backlog in backlogs:
        result[str(backlog)] = _one(servers, backlog, live)
    return result
