"""Handlers the routing tests refer to by import path (``routed_handlers:audit``)."""

from __future__ import annotations

from typing import Any

SEEN: list[Any] = []


def audit(event: Any) -> None:
    SEEN.append(event)


not_callable = 42
