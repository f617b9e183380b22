"""The one polling helper of the tests: wait, with a deadline, until something holds. Test modules anywhere under
tests/ import it as `from waiting import wait_for` (pytest puts tests/ on sys.path for tests/conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60, interval: float = 0.25) -> Any:
    """Poll check() until it returns something truthy, and return it; fail after the deadline."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(interval)
    return result
