"""The instance's Prometheus metrics, in a registry of its own (two instances may share a process
in tests)."""

from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Every name begins "reporting_".
        counter = partial(Counter, namespace="reporting", registry=self.registry)
        gauge = partial(Gauge, namespace="reporting", registry=self.registry)
        histogram = partial(Histogram, namespace="reporting", registry=self.registry)
        self.received = counter("received", "Messages taken from the broker", ["kind"])
        self.journalled = counter("journalled_records", "Records appended to the journal")
        self.stored = counter("stored_reports", "Reports stored in the database")
        self.duplicates = counter(
            "duplicate_reports", "Reports already stored (redelivery, replay)"
        )
        self.rejected = counter("rejected_reports", "Messages stored as rejected", ["reason"])
        self.replayed = counter(
            "replayed_records", "Records drained from a backlog after an outage"
        )
        self.pending_records = gauge(
            "journal_pending_records", "Journal records not yet in the database"
        )
        self.pending_bytes = gauge("journal_pending_bytes", "Journal bytes not yet released")
        self.quarantined = counter("journal_quarantined_segments", "Segments moved to quarantine")
        self.journal_full = counter("journal_full", "Times consumption paused on a full journal")
        self.database_up = gauge("database_up", "1 while the database answers")
        self.broker_connected = gauge("broker_connected", "1 while a broker connection is open")
        self.active = gauge("active", "1 while this instance is active")
        self.queue_owned = gauge(
            "queue_owned", "Group mode: 1 while this instance owns the queue", ["queue"]
        )
        self.epoch = gauge("epoch", "The fencing epoch of this instance")
        self.fenced = counter("fenced_writes", "Database writes refused by the fence")
        self.rewound = counter(
            "positions_rewound",
            "Times the database had lost committed positions and the journal was replayed",
        )
        self.append_seconds = histogram("journal_append_seconds", "Journal batch append with fsync")
        self.drain_seconds = histogram("drain_batch_seconds", "Database batch transaction")
