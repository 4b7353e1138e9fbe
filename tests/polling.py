"""Waiting for a condition in tests: poll it until it holds or the time is up."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(cond: Callable[[], object], timeout: float = 10.0, step: float = 0.01) -> bool:
    """Whether ``cond()`` became true within ``timeout`` seconds, checked every ``step``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True
