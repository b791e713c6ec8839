"""The README demo runs for real, as a subprocess, and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis
from support import free_port, keys_of, redis_url

pytestmark = pytest.mark.redis


def test_demo_runs_and_cleans_up(real_client: redis.Redis, ns: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CHI_REDIS_URL", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chi_redis.demo",
            "--redis-url",
            redis_url(),
            "--namespace",
            ns,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "same idempotency key again" in out
    assert "publish_batch: 20 orders" in out
    assert "100 written, 0 failed" in out
    assert "-> UserCreated" in out
    assert "OrderCreated(order_id='o-1'" in out
    # the example handlers ran in a real worker process
    assert "welcome-email   sent 'Welcome!' to grace@example.com" in out
    assert "security-alerts recorded security.login_failed" in out
    assert "order-processor booked 990 cents for u-9" in out
    assert "dead letter" in out and "ValueError: order o-bad has a negative amount" in out
    assert f"keys under {ns}:*" in out
    assert keys_of(real_client, ns) == []


def test_demo_reports_an_unreachable_redis_in_one_line() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chi_redis.demo",
            "--redis-url",
            f"redis://:hunter2@127.0.0.1:{free_port()}/0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "error: cannot reach Redis" in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
