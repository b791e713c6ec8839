"""Waiting on conditions with deadlines: never a fixed sleep for correctness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEFAULT_TIMEOUT_S = 30.0


def wait_until(
    condition: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT_S,
    message: str = "condition",
    *,
    interval: float = 0.01,
) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


async def await_until(
    condition: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT_S,
    message: str = "condition",
    *,
    interval: float = 0.01,
) -> Any:
    """The asyncio twin of :func:`wait_until`; ``condition`` may return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(interval)


def stays(condition: Callable[[], Any], duration: float, *, interval: float = 0.05) -> bool:
    """Whether ``condition`` holds throughout ``duration`` seconds ("nothing more arrives")."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(interval)
    return bool(condition())
