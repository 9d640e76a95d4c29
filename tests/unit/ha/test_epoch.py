"""What an epoch node's data counts as: a whole number the next epoch and the database's BIGINT
fence can hold, else 0 (the fence then refuses the epochs below it once)."""

import logging

import pytest

from reporting.ha.epoch import MAX_EPOCH, _parsed


@pytest.mark.parametrize(
    ("data", "epoch"),
    [
        (b"", 0),
        (b"0", 0),
        (b"7", 7),
        (b" 12\n", 12),
        (b"+3", 3),
        (str(MAX_EPOCH - 1).encode(), MAX_EPOCH - 1),
    ],
)
def test_a_whole_number_is_the_epoch(data: bytes, epoch: int, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert _parsed("/c/epoch", data) == epoch
    assert not caplog.records


@pytest.mark.parametrize(
    "data",
    [b"-5", b"abc", b"3.5", b"\xff\xfe", "\u0663".encode(), str(MAX_EPOCH).encode(), b"9" * 5000],
)
def test_anything_else_counts_as_0_in_one_warning(data: bytes, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert _parsed("/c/epoch", data) == 0
    [record] = caplog.records
    assert "/c/epoch" in record.getMessage() and "counting from 0" in record.getMessage()
