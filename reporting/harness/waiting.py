"""Waiting for a condition by polling it: the one way tests, chaos runs and benchmarks wait.

Polling the state a wait is for, never sleeping a guessed time, keeps waits as short as the
servers allow and makes a slow machine fail late instead of falsely.
"""

import time
from collections.abc import Callable
from typing import Any


class WaitTimeout(AssertionError, TimeoutError):
    """A condition did not hold in time: a failed assertion to a test, a timeout to a bench."""


def wait_until(
    condition: Callable[[], Any],
    timeout_s: float,
    what: str = "a condition",
    *,
    every_s: float = 0.05,
) -> Any:
    """The first truthy value of `condition()`, polled every `every_s`; WaitTimeout after
    `timeout_s`, naming `what` was awaited."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


def holds_within(condition: Callable[[], Any], timeout_s: float, *, every_s: float = 0.05) -> bool:
    """Whether `condition()` becomes true within `timeout_s`: for what may, or must not, happen."""
    try:
        wait_until(condition, timeout_s, every_s=every_s)
    except WaitTimeout:
        return False
    return True
