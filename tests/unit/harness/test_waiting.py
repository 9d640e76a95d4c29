"""wait_until returns the first truthy value or fails naming what it waited for; holds_within
says whether a condition came true in time."""

import itertools
import time

import pytest

from reporting.harness.waiting import WaitTimeout, holds_within, wait_until


def test_returns_the_first_truthy_value() -> None:
    values = iter([0, None, "", "ready", "later"])
    assert wait_until(lambda: next(values), 5, every_s=0.001) == "ready"


def test_times_out_naming_what_it_waited_for() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match="waiting for the moon"):
        wait_until(lambda: False, 0.2, "the moon", every_s=0.01)
    assert 0.2 <= time.monotonic() - started < 2


@pytest.mark.parametrize("kind", [AssertionError, TimeoutError])
def test_a_timeout_is_a_failed_assertion_and_a_timeout_error(kind: type[Exception]) -> None:
    # Tests see a failure, benchmarks catch TimeoutError to keep the figures so far.
    with pytest.raises(kind):
        wait_until(lambda: False, 0.01, every_s=0.001)


def test_holds_within() -> None:
    calls = itertools.count()
    assert holds_within(lambda: next(calls) >= 3, 5, every_s=0.001)
    assert not holds_within(lambda: False, 0.05, every_s=0.01)
