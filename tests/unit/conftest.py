"""Fixtures of the unit tests of the script calls that need a redis-server of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.servers import RedisServer


@pytest.fixture(scope="module")
def script_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the test module's own: the tests flush its script cache, hold it
    busy with a slow script and close or kill its connections."""
    own = RedisServer(Path(tmp_path_factory.mktemp("scripts"))).start()
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture
def script_admin(script_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of ``script_server`` that has forgotten every script."""
    c = script_server.client()
    c.script_flush()
    yield c
    c.close()
