"""The sample reports: valid per the contract, and reproducible from their seed."""

import json
import random
from datetime import UTC, datetime

import pytest

from reporting.samples import sample_report
from storage.reports import KINDS, Report
from tests.unit.wire.test_decode_fuzz import decode_kind


@pytest.mark.parametrize("kind", KINDS)
def test_sample_reports_are_valid(kind):
    rng = random.Random(11)
    for _ in range(200):
        payload = sample_report(kind, rng)
        item = decode_kind(
            kind, {"report-id": "r"}, json.dumps(payload).encode(), datetime.now(UTC)
        )
        assert isinstance(item, Report), item


def test_sample_reports_follow_the_seed():
    assert sample_report("sq", random.Random(5)) == sample_report("sq", random.Random(5))
    with pytest.raises(ValueError, match="unknown report kind"):
        sample_report("xyz", random.Random(5))
