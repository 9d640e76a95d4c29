"""What the benchmarks send and the baseline consumers they compare the server with.

- `preload`: N reports of all kinds into the broker as fast as receipts allow (several clients in
  threads, each with many reports in flight).
- `PacedSender`: reports at a steady rate, each carrying its send time (`sent_at`, Unix seconds)
  in the payload, for the latency and failover figures.
- `raw_drain`: the broker's own limit: a stomp.py consumer that acks cumulatively and stores
  nothing.
- `raw_drain_per_queue`: the machine's limit: such a consumer per queue, each in its own process.
- `naive_drain`: the simple way: one SQLAlchemy transaction per report, then its own ack.
"""

import json
import multiprocessing
import random
import threading
import time
from typing import Any

import stomp
from sqlalchemy import create_engine
from sqlalchemy.dialects.postgresql import insert as pg_insert

from bench.servers import destination, queues, say
from reporting.config import HostPort
from reporting.samples import sample_report
from reporting.wire.decode import decode
from reporting.wire.producer import ReportClient
from storage.database import Sink
from storage.database.rows import report_row
from storage.database.schema import reports
from storage.reports import KINDS, Report


def preload(
    host: str, prefix: str, count: int, *, id_prefix: str, threads: int = 4, in_flight: int = 500
) -> dict[str, float]:
    """Sends `count` reports (kinds in turn) with receipts; returns the send rate."""
    sent = [0] * threads
    errors: list[BaseException] = []

    def run(index: int) -> None:
        rng = random.Random(index)
        try:
            with ReportClient([host], in_flight=in_flight, queues=queues(prefix)) as client:
                for i in range(index, count, threads):
                    kind = KINDS[i % len(KINDS)]
                    body = json.dumps(sample_report(kind, rng), separators=(",", ":")).encode()
                    client.send_raw(
                        destination(prefix, kind), body, report_id=f"{id_prefix}-{i:09d}"
                    )
                    sent[index] += 1
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    deadline = started + max(120.0, count / 200)
    last_said = started
    for worker in workers:
        while worker.is_alive() and time.monotonic() < deadline:
            worker.join(0.5)
            if time.monotonic() - last_said >= 5:
                last_said = time.monotonic()
                say(f"  preloading: {sum(sent):,}/{count:,}")
    if errors:
        raise errors[0]
    if any(worker.is_alive() for worker in workers):
        raise TimeoutError(f"preload of {count} reports did not finish")
    seconds = time.monotonic() - started
    return {"reports": count, "seconds": seconds, "reports_per_s": count / seconds}


class PacedSender:
    """Sends reports at `rate` per second from one thread until stopped; logs (id, sent_at)."""

    def __init__(
        self,
        hosts: list[str],
        prefix: str,
        *,
        rate: float,
        id_prefix: str,
        count: int | None = None,
        failback_s: float = 10.0,
    ) -> None:
        self.client = ReportClient(
            hosts, in_flight=200, queues=queues(prefix), failback_s=failback_s
        )
        self.prefix = prefix
        self.rate = rate
        self.id_prefix = id_prefix
        self.count = count
        self.sent: list[tuple[str, float]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-sender", daemon=True)

    def start(self) -> "PacedSender":
        self._thread.start()
        return self

    def _run(self) -> None:
        rng = random.Random(11)
        started = time.monotonic()
        i = 0
        try:
            while not self._stop.is_set() and (self.count is None or i < self.count):
                kind = KINDS[i % len(KINDS)]
                report = sample_report(kind, rng)
                report_id = f"{self.id_prefix}-{i:09d}"
                sent_at = time.time()
                report["sent_at"] = sent_at
                body = json.dumps(report, separators=(",", ":")).encode()
                self.client.send_raw(destination(self.prefix, kind), body, report_id=report_id)
                self.sent.append((report_id, sent_at))
                i += 1
                ahead = i / self.rate - (time.monotonic() - started)
                if ahead > 0.002:
                    time.sleep(ahead)
            self.client.flush()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def first_sent_after(self, wall: float) -> tuple[str, float] | None:
        """The first report whose send began after `wall` (Unix seconds), once there is one."""
        found = None
        for report_id, sent_at in reversed(self.sent):
            if sent_at <= wall:
                break
            found = (report_id, sent_at)
        return found

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        try:
            self.client.close()
        except Exception as exc:  # the figures are taken; closing is best effort
            say(f"  closing the sender: {exc}")
        if self.error is not None:
            raise self.error


class _Collector(stomp.ConnectionListener):
    """Counts messages; `handle` decides what each one costs."""

    def __init__(self, conn: stomp.Connection12, count: int) -> None:
        self.conn = conn
        self.count = count
        self.received = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def on_message(self, frame: Any) -> None:
        if self.done.is_set():
            return
        try:
            if self.received == 0:
                self.first_at = time.monotonic()
            self.handle(frame)
            self.received += 1
            self.last_at = time.monotonic()
            if self.received >= self.count:
                self.finish()
                self.done.set()
        except BaseException as exc:  # reported by the caller
            self.error = exc
            self.done.set()

    def handle(self, frame: Any) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called after the last message counted."""


class _RawAcker(_Collector):
    def __init__(self, conn: stomp.Connection12, count: int, ack_every: int) -> None:
        super().__init__(conn, count)
        self.ack_every = ack_every
        self.last: dict[str, str] = {}

    def handle(self, frame: Any) -> None:
        self.last[frame.headers["subscription"]] = frame.headers["ack"]
        if (self.received + 1) % self.ack_every == 0:
            self.finish()

    def finish(self) -> None:
        for ack_id in self.last.values():
            self.conn.ack(ack_id)
        self.last.clear()


class _NaiveStorer(_Collector):
    def __init__(self, conn: stomp.Connection12, count: int, db_url: str, prefix: str) -> None:
        super().__init__(conn, count)
        self.engine = create_engine(db_url, pool_size=1)
        self.queues = frozenset(queues(prefix))

    def handle(self, frame: Any) -> None:
        from datetime import UTC, datetime

        headers = dict(frame.headers)
        item = decode(
            headers.get("destination", ""),
            headers,
            frame.body,
            queues=self.queues,
            max_body_bytes=1 << 20,
            now=datetime.now(UTC),
        )
        if isinstance(item, Report):
            statement = pg_insert(reports).values(report_row(item)).on_conflict_do_nothing()
            with self.engine.begin() as conn:
                conn.execute(statement)
        self.conn.ack(headers["ack"])


def _consume(
    host: str,
    names: list[str],
    make: Any,
    *,
    prefetch: int,
    ack: str,
    timeout_s: float,
    connected: Any = None,
) -> _Collector:
    address = HostPort.parse(host)
    conn = stomp.Connection12([(address.host, address.port)], heartbeats=(0, 0), auto_decode=False)
    collector = make(conn)
    conn.set_listener("bench", collector)
    conn.connect(wait=True)
    if connected is not None:
        connected()  # waits there until every consumer has connected
    try:
        for index, queue in enumerate(names):
            conn.subscribe(
                f"/queue/{queue}",
                id=str(index),
                ack=ack,
                headers={"activemq.prefetchSize": str(prefetch)},
            )
        collector.done.wait(timeout_s)
    finally:
        collector.done.set()
        try:
            conn.disconnect()
        except Exception:  # the count is taken; an unclean close costs nothing here
            conn.transport.disconnect_socket()
    if collector.error is not None:
        raise collector.error
    return collector


def _rate(collector: _Collector) -> dict[str, float]:
    seconds = collector.last_at - collector.first_at
    return {
        "reports": collector.received,
        "seconds": seconds,
        "reports_per_s": (collector.received - 1) / seconds if seconds > 0 else 0.0,
    }


def raw_drain(
    host: str, prefix: str, count: int, *, prefetch: int, ack_every: int, timeout_s: float = 600
) -> dict[str, float]:
    """Receives `count` reports with `client` acks every `ack_every`; stores nothing."""
    collector = _consume(
        host,
        queues(prefix),
        lambda conn: _RawAcker(conn, count, ack_every),
        prefetch=prefetch,
        ack="client",
        timeout_s=timeout_s,
    )
    if collector.received < count:
        raise TimeoutError(f"raw drain received {collector.received} of {count}")
    return _rate(collector)


def _drain_one_queue(
    host: str, queue: str, count: int, prefetch: int, ack_every: int, timeout_s: float, start: Any
) -> tuple[int, float, float, float]:
    """One process's part of `raw_drain_per_queue` (a module function, so that it pickles):
    what it received, when it began and ended, and the CPU time it took from its start."""
    cpu_from = [0.0]

    def connected() -> None:
        start.wait()
        cpu_from[0] = time.process_time()

    collector = _consume(
        host,
        [queue],
        lambda conn: _RawAcker(conn, count, ack_every),
        prefetch=prefetch,
        ack="client",
        timeout_s=timeout_s,
        connected=connected,
    )
    cpu_s = time.process_time() - cpu_from[0]
    return collector.received, collector.first_at, collector.last_at, cpu_s


def raw_drain_per_queue(
    host: str, prefix: str, count: int, *, prefetch: int, ack_every: int, timeout_s: float = 600
) -> dict[str, float]:
    """`raw_drain` with one consumer per queue, each in its own process (the preload sends the
    kinds in turn, so each queue holds its share); they subscribe together once all are
    connected, and the rate runs from the first report any of them received to the last. CPU
    per report: the processes' CPU time from their subscribing, over the reports."""
    names = queues(prefix)
    shares = [count // len(names) + (1 if i < count % len(names) else 0) for i in range(len(names))]
    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    start = manager.Barrier(len(names))
    with context.Pool(len(names)) as pool:
        jobs = [
            (host, q, n, prefetch, ack_every, timeout_s, start)
            for q, n in zip(names, shares, strict=True)
        ]
        parts = pool.starmap(_drain_one_queue, jobs)
    manager.shutdown()
    received = sum(part[0] for part in parts)
    if received < count:
        raise TimeoutError(f"per-queue raw drain received {received} of {count}")
    # CLOCK_MONOTONIC is one clock for every process of the host.
    seconds = max(part[2] for part in parts) - min(part[1] for part in parts)
    cpu_s = sum(part[3] for part in parts)
    return {
        "reports": received,
        "seconds": seconds,
        "reports_per_s": (received - 1) / seconds if seconds > 0 else 0.0,
        "cpu_us_per_report": cpu_s / received * 1e6,
    }


def naive_drain(
    host: str, prefix: str, db_url: str, *, count: int, seconds: float, prefetch: int
) -> dict[str, float]:
    """Stores reports one transaction and one ack each, for `count` reports or `seconds`."""
    Sink(db_url, cluster="naive", journal="naive").upgrade()
    collector = _consume(
        host,
        queues(prefix),
        lambda conn: _NaiveStorer(conn, count, db_url, prefix),
        prefetch=prefetch,
        ack="client-individual",
        timeout_s=seconds,
    )
    return _rate(collector)
