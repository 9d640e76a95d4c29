"""The instance's Prometheus metrics, in a registry of its own (two instances may share a process
in tests)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "reporting_received", "Messages taken from the broker", ["kind"], registry=r
        )
        self.journalled = Counter(
            "reporting_journalled_records", "Records appended to the journal", registry=r
        )
        self.stored = Counter(
            "reporting_stored_reports", "Reports stored in the database", registry=r
        )
        self.duplicates = Counter(
            "reporting_duplicate_reports", "Reports already stored (redelivery, replay)", registry=r
        )
        self.rejected = Counter(
            "reporting_rejected_reports", "Messages stored as rejected", ["reason"], registry=r
        )
        self.replayed = Counter(
            "reporting_replayed_records",
            "Records drained from a backlog after an outage",
            registry=r,
        )
        self.pending_records = Gauge(
            "reporting_journal_pending_records",
            "Journal records not yet in the database",
            registry=r,
        )
        self.pending_bytes = Gauge(
            "reporting_journal_pending_bytes", "Journal bytes not yet released", registry=r
        )
        self.quarantined = Counter(
            "reporting_journal_quarantined_segments", "Segments moved to quarantine", registry=r
        )
        self.journal_full = Counter(
            "reporting_journal_full", "Times consumption paused on a full journal", registry=r
        )
        self.database_up = Gauge(
            "reporting_database_up", "1 while the database answers", registry=r
        )
        self.broker_connected = Gauge(
            "reporting_broker_connected", "1 while a broker connection is open", registry=r
        )
        self.active = Gauge("reporting_active", "1 while this instance is active", registry=r)
        self.queue_owned = Gauge(
            "reporting_queue_owned",
            "Group mode: 1 while this instance owns the queue",
            ["queue"],
            registry=r,
        )
        self.epoch = Gauge("reporting_epoch", "The fencing epoch of this instance", registry=r)
        self.fenced = Counter(
            "reporting_fenced_writes", "Database writes refused by the fence", registry=r
        )
        self.rewound = Counter(
            "reporting_positions_rewound",
            "Times the database had lost committed positions and the journal was replayed",
            registry=r,
        )
        self.append_seconds = Histogram(
            "reporting_journal_append_seconds", "Journal batch append with fsync", registry=r
        )
        self.drain_seconds = Histogram(
            "reporting_drain_batch_seconds", "Database batch transaction", registry=r
        )
