"""Fixtures of the reliability cases: ``case``, one worker-fault case
(:class:`support.workercase.WorkerCase`) on a redis-server of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import RedisServers
from support.workercase import WorkerCase


@pytest.fixture
def case(tmp_path: Path, ns: str, redis_servers: RedisServers) -> Iterator[WorkerCase]:
    """An own redis-server, a history and (not yet started) worker processes."""
    c = WorkerCase(tmp_path, redis_servers.start(), ns)
    try:
        yield c
    finally:
        c.close()
