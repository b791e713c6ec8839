"""Skip locally, fail in CI: a missing server must never turn a CI run green."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    """Whether the tests run in CI, where a missing server fails instead of skipping."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip locally; fail when ``CI=true``."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


def require_redis_server_binary() -> None:
    """Skip (fail in CI) when ``redis-server`` is not on the PATH."""
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed")
