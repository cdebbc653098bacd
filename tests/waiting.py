"""Wait, bounded, for something a real process does on its own schedule.

One blocking helper (for tests that drive a subprocess from plain code) and one async helper
(for tests whose event loop must keep running while they wait). Both poll a probe until it
returns something truthy, treat an ``OSError`` from the probe (nothing listening yet) as
"not yet", and fail with what they were waiting for.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, *, interval: float = 0.1
) -> T:
    """Poll ``probe`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except OSError as exc:
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error})"
    )


async def eventually(
    probe: Callable[[], T | Awaitable[T | None] | None],
    what: str = "the condition",
    *,
    timeout: float = 30.0,
    interval: float = 0.02,
) -> T:
    """Poll ``probe`` (plain or async) until it returns something truthy, and return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: OSError | None = None
    while loop.time() < deadline:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
        except OSError as exc:
            last_error = exc
        else:
            if value:
                return value
        await asyncio.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error})"
    )
