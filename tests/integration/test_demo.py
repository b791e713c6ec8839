"""The README demo runs for real, as a subprocess, and leaves nothing behind.

``chi-redis demo`` runs it on Redis when one answers and on the embedded bus otherwise (or
with ``--embedded``); ``python -m chi_redis.demo`` is the Redis-only tour.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis
from support import free_port, keys_of, redis_url

#: What the tour prints when every part of it ran, on either bus.
TOUR = [
    "same idempotency key again",
    "publish_batch: 20 orders",
    "100 written, 0 failed",
    "-> UserCreated",
    "OrderCreated(order_id='o-1'",
    # the example handlers ran
    "welcome-email   sent 'Welcome!' to grace@example.com",
    "user-audit      recorded user.created",
    "created-audit   recorded order.created",
    "security-alerts recorded security.login_failed",
    "order-processor booked 990 cents for u-9",
    "dead letter ",
    "retries_exhausted after 4 attempts, ValueError: order o-bad has a negative amount",
]
EMBEDDED_LINE = "running on the embedded bus"


def _run(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CHI_REDIS_URL", None)
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def _assert_tour(out: str) -> None:
    missing = [line for line in TOUR if line not in out]
    assert missing == [], out


@pytest.mark.redis
def test_demo_runs_and_cleans_up(real_client: redis.Redis, ns: str) -> None:
    result = _run("-m", "chi_redis.demo", "--redis-url", redis_url(), "--namespace", ns)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    _assert_tour(out)
    assert "a real worker process" in out  # `dramatiq chi_redis.worker handlers.worker`
    assert f"keys under {ns}:*" in out
    assert keys_of(real_client, ns) == []


@pytest.mark.redis
def test_chi_redis_demo_uses_redis_when_it_answers(real_client: redis.Redis, ns: str) -> None:
    result = _run("-m", "chi_redis.cli", "demo", "--redis-url", redis_url(), "--namespace", ns)
    assert result.returncode == 0, result.stderr
    _assert_tour(result.stdout)
    assert EMBEDDED_LINE not in result.stdout
    assert "a real worker process" in result.stdout
    assert keys_of(real_client, ns) == []


def test_chi_redis_demo_without_redis_runs_on_the_embedded_bus() -> None:
    # A port with nothing on it: the tour says so in one line and runs in-process.
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = _run("-m", "chi_redis.cli", "demo", "--redis-url", url)
    assert result.returncode == 0, result.stderr
    first, *_ = result.stdout.splitlines()
    assert EMBEDDED_LINE in first and "no Redis answers at redis://127.0.0.1:" in first
    _assert_tour(result.stdout)
    assert "an in-process worker" in result.stdout
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_chi_redis_demo_embedded_on_request() -> None:
    result = _run("-m", "chi_redis.cli", "demo", "--embedded", "--no-handlers")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert EMBEDDED_LINE not in out  # asked for, not a fallback
    assert "EventBus('redis://embedded/0', namespace='demo')" in out
    assert "100 written, 0 failed" in out and "-> UserCreated" in out
    assert "== subscriptions" not in out


def test_demo_reports_an_unreachable_redis_in_one_line() -> None:
    result = _run("-m", "chi_redis.demo", "--redis-url",
                  f"redis://:hunter2@127.0.0.1:{free_port()}/0", timeout=120)
    assert result.returncode == 1
    assert "error: cannot reach Redis" in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
