"""Polling for the eventually-consistent parts of Kubernetes (controllers, finalizers)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2, what: str = "condition"
) -> T:
    """Return the first truthy value ``probe`` gives; fail the test, naming ``what``, at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout:.0f}s (last value: {last!r})")
