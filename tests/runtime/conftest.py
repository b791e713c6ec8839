"""Fixtures of the runtime tests (kept here, apart from tests/conftest.py).

- ``ns``: a namespace of this test only; its keys are deleted afterwards.
- ``rt``: a :class:`~rt.Runtime` on fakeredis (Redis 7.0, Lua via lupa) and on the real
  server; ``real_rt`` only on the real server.  Real-server tests skip when it is
  unreachable, and fail when ``CI=true``.
- Dramatiq's consumer-restart and post-process retry delays are shortened, so connection
  error tests do not wait seconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import dramatiq
import dramatiq.broker
import dramatiq.worker
import fakeredis
import pytest
import redis
from helpers import connect_real_redis, delete_namespace

from .rt import REDIS_URL, Runtime


@pytest.fixture
def ns() -> str:
    return f"rt{uuid.uuid4().hex[:10]}"


@pytest.fixture
def real_redis(ns: str) -> Iterator[redis.Redis]:
    client = connect_real_redis(REDIS_URL)
    try:
        yield client
    finally:
        delete_namespace(client, ns)
        client.close()


@pytest.fixture
def fake_redis() -> Iterator[redis.Redis]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)), version=(7, 0))
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _fast_dramatiq(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(dramatiq.worker, "CONSUMER_RESTART_DELAY_SECS", 0.1)
    monkeypatch.setattr(dramatiq.worker, "POST_PROCESS_MESSAGE_RETRY_DELAY_SECS", 0.05)
    previous = dramatiq.broker.global_broker
    yield
    dramatiq.broker.global_broker = previous


def _runtime(client: redis.Redis, ns: str, kind: str) -> Iterator[Runtime]:
    runtime = Runtime(client, ns, kind)
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.redis)])
def rt(request: pytest.FixtureRequest, ns: str) -> Iterator[Runtime]:
    client = request.getfixturevalue("fake_redis" if request.param == "fake" else "real_redis")
    yield from _runtime(client, ns, request.param)


@pytest.fixture
def real_rt(real_redis: redis.Redis, ns: str) -> Iterator[Runtime]:
    yield from _runtime(real_redis, ns, "real")
