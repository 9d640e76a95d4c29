"""Journals full of sample reports, written directly with Journal.append_batch.

Each record is what the server's intake writes for a report that came over the wire: the client's
JSON body taken through `decode`, so the record carries the producer's text as it was sent.

A backlog of a million records takes a while to build, so each size is built once per run into a
template directory and copied for every use.
"""

import json
import random
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from bench.servers import queues, say
from reporting.config import BrokerConfig
from reporting.samples import sample_report
from reporting.wire.decode import decode
from storage.journal import Journal
from storage.reports import KINDS, Report, to_record

BATCH_RECORDS = 1000
WRITER = "bench-backlog"
_templates: dict[int, Path] = {}


def sample_reports(count: int, *, seed: int = 3, prefix: str = "bench.") -> Iterator[Report]:
    """Reports as the intake decodes them: each from the body `ReportingClient.send` would send."""
    rng = random.Random(seed)
    names = dict(zip(KINDS, queues(prefix), strict=True))
    known = frozenset(names.values())
    at = datetime.now(UTC)
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        body = json.dumps(sample_report(kind, rng), separators=(",", ":"), ensure_ascii=False)
        report = decode(
            f"/queue/{names[kind]}",
            {"report-id": f"backlog-{seed}-{i:09d}"},
            body.encode("utf-8"),
            queues=known,
            max_body_bytes=BrokerConfig.max_body_bytes,
            now=at,
        )
        if not isinstance(report, Report) or report.body is None:
            raise RuntimeError(f"a sample report did not decode as one: {report}")
        yield report


def template(root: Path, count: int) -> Path:
    """This run's journal of `count` records (built on first use); read it, never write to it."""
    path = _templates.get(count)
    if path is not None:
        return path
    path = root / f"template-{count}"
    say(f"  building a journal of {count:,} records")
    journal = Journal(path, writer=WRITER, max_bytes=1 << 40)
    try:
        batch: list[bytes] = []
        for written, report in enumerate(sample_reports(count), 1):
            batch.append(to_record(report))
            if len(batch) == BATCH_RECORDS:
                journal.append_batch(batch)
                batch = []
            if written % 200_000 == 0:
                say(f"  journal: {written:,}/{count:,}")
        if batch:
            journal.append_batch(batch)
    finally:
        journal.close()
    _templates[count] = path
    return path


def build(root: Path, directory: Path, count: int) -> Path:
    """A journal of `count` records in `directory`: a copy of the run's template of that size."""
    shutil.copytree(template(root, count), directory)
    return directory
