"""Waiting on a condition under a deadline: the one polling helper the tests share.

Tests never sleep and hope; they poll a predicate the code under test will make true, and fail
with what they were waiting for when the deadline passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_for(pred: Callable[[], object], what: str = "a condition",
                   timeout_s: float = 10.0, interval_s: float = 0.005) -> None:
    """Return once `pred()` is true; raise AssertionError naming `what` after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)
