"""`reporting-server run --config FILE`: one instance in the foreground until SIGTERM/SIGINT."""

import argparse
import errno
import faulthandler
import gc
import logging
import os
import signal
import threading

from reporting import logs
from reporting.config import load_config
from reporting.errors import ConfigError, ReportingError

log = logging.getLogger("reporting.run")
# Allocations between two collections of the youngest generation.
GC_THRESHOLD = 50_000


def collect_rarely() -> None:
    """Tunes the garbage collector for moving reports, once start-up is done (run, replay).

    The objects made at start-up live as long as the process: the collector need not look at
    them again. Reports pass through in batches of thousands of short-lived objects with no
    reference cycles among them; a collection every 700 allocations (the default) spent a
    sizeable share of the CPU time on walking them."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="run one instance in the foreground")
    parser.add_argument("--config", required=True, help="the instance's TOML file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reporting.exposure import plaintext_passwords
    from reporting.notify import Notifier, ServiceNotifier, watchdog_interval_s
    from reporting.server import Server
    from reporting.status.http import StatusServer
    from reporting.wire.consumer import check_login

    config = load_config(args.config)
    for line in plaintext_passwords(config):
        log.warning("%s: %s", config.name, line)
    if config.broker.user is not None or config.broker.tls:
        # Wrong credentials or an untrusted certificate stop start-up here, not at the first
        # failover to this instance.
        check_login(config.broker)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # `kill -USR1 PID` prints every thread's stack to the log: for an instance that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    server = Server(config)
    logs.describe_instance(config.name, lambda: server.role)
    refused: list[ReportingError] = []

    def on_refused(error: ReportingError) -> None:
        refused.append(error)
        stop.set()

    # A refusal while active ends the instance (exit 1), which hands the role to the peer. So
    # does an election that cannot take part (ZooKeeper credentials, a node not the pair's own),
    # at start-up and later alike: without it the instance would stand by for ever, silently.
    server.watch_refusals(on_refused)
    server.election.watch_refusals(on_refused)
    try:
        http = StatusServer(
            config.http.host,
            config.http.port,
            status=server.status,
            registry=server.metrics.registry,
        )
    except OSError as exc:
        reason = f"cannot listen on {config.http.listen}: {exc.strerror}"
        if exc.errno == errno.EADDRINUSE:
            # Held by another process, perhaps only for now: a failure a restart may get past
            # (exit 1), not a configuration error that stops a supervisor's restarts (exit 2).
            raise ReportingError(f"http.listen: {reason}") from None
        raise ConfigError("http.listen", reason) from None
    http.start()
    log.info(
        "%s: %s mode, status on http://%s/status", config.name, config.ha.mode, config.http.listen
    )
    server.start()
    collect_rarely()
    # Under systemd (Type=notify): READY=1 once the election is joined, STATUS= per role change,
    # WATCHDOG=1 while the consumer threads work.
    systemd = ServiceNotifier(
        Notifier.from_environment(os.environ),
        joined=lambda: server.joined,
        describe=server.describe_role,
        working=server.working,
        watchdog_s=watchdog_interval_s(os.environ),
    )
    systemd.start()
    # A signal may be delivered to any thread; the main thread runs the handler only when it
    # wakes, and a wait without a time-out may not wake for it. So it wakes every 0.1 s.
    while not stop.wait(0.1):
        pass
    if not refused:
        log.info("%s: signal received; stopping", config.name)
    systemd.stop()
    server.stop()
    http.stop()
    if refused:
        raise refused[0]
    return 0
