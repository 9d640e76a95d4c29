"""The producer's JSON text is stored as it is (PostgreSQL COPY), and reads back as its payload."""

import json
from datetime import UTC, datetime

import pytest
import sqlalchemy
from sqlalchemy import select

from storage.database import Sink
from storage.database.schema import reports
from storage.reports import Report, from_record, to_record

pytestmark = pytest.mark.integration


def test_body_text_goes_through_the_journal_into_the_database(pg_url: str) -> None:
    payload = {"call_id": "c1", "component": "mcp", "metric": "mos", "value": 4.25, "n": [1, {}]}
    body = ' {"value": 4.25, "n": [1, {}], "metric": "mos",\n "component": "mcp", "call_id": "c1"}'
    report = Report("p-1", "sq", "gvp.reporting.sq", payload, datetime.now(UTC), body)
    again = from_record(to_record(report))
    assert again == report
    plain = Report("p-2", "sq", "gvp.reporting.sq", payload, datetime.now(UTC))
    sink = Sink(pg_url, cluster="c", journal="j")
    try:
        sink.upgrade()
        result = sink.write_batch([again, plain], positions={"s": 10}, epoch=1)
        assert result.stored == 2
    finally:
        sink.close()
    engine = sqlalchemy.create_engine(pg_url)
    with engine.connect() as conn:
        rows = dict(conn.execute(select(reports.c.report_id, reports.c.payload)).all())
        metric = conn.execute(select(reports.c.metric).where(reports.c.report_id == "p-1"))
        assert metric.scalar_one() == "mos"
    engine.dispose()
    assert rows["p-1"] == payload == rows["p-2"]
    assert json.loads(body) == payload
