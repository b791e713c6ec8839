"""Fixtures of the runtime tests (the shared ones are in tests/conftest.py).

- ``rt``: a :class:`support.Runtime` on fakeredis (Redis 7.0, Lua via lupa) and on the real
  server; ``real_rt`` only on the real server.  Real-server tests skip when it is
  unreachable, and fail when ``CI=true``.
- ``workers``: real worker processes (:class:`support.processes.Workers`) on the real server.
- Dramatiq's consumer-restart and post-process retry delays are shortened for every test
  here (:func:`support.patch_dramatiq`), so connection error tests do not wait seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import REDIS_URL
from support.markers import REAL
from support.processes import Workers
from support.runtime import Runtime, in_process_runtime, patch_dramatiq

from chi_redis import EventBus


@pytest.fixture(autouse=True)
def _fast_dramatiq(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_dramatiq(monkeypatch)


@pytest.fixture(params=["fake", REAL])
def rt(request: pytest.FixtureRequest, ns: str,
       monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    client: redis.Redis = request.getfixturevalue(
        "fake_client" if request.param == "fake" else "real_client")
    with in_process_runtime(EventBus(client, namespace=ns), monkeypatch,
                            kind=request.param) as runtime:
        yield runtime


@pytest.fixture
def real_rt(real_client: redis.Redis, ns: str,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    with in_process_runtime(EventBus(real_client, namespace=ns), monkeypatch) as runtime:
        yield runtime


@pytest.fixture
def workers(tmp_path: Path, ns: str, real_client: redis.Redis) -> Iterator[Workers]:
    """Worker processes on the real server, stopped (by pid) after the test."""
    ws = Workers(tmp_path, REDIS_URL, ns)
    try:
        yield ws
    finally:
        ws.stop()
