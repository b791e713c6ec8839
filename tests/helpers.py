"""Helpers shared by the test suites: waiting on conditions, free ports, own redis-servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

DEFAULT_TIMEOUT_S = 30.0


def in_ci() -> bool:
    """Whether the tests run in CI, where a missing server fails instead of skipping."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip locally; fail when ``CI=true``."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


def wait_until(
    condition: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.01,
    message: str = "condition",
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
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
    interval: float = 0.01,
    message: str = "condition",
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keys_of(client: redis.Redis, namespace: str) -> list[bytes]:
    """Every key of ``namespace`` (SCAN, never KEYS)."""
    return sorted(client.scan_iter(match=f"{namespace}:*", count=1000))


def connect_real_redis(url: str) -> redis.Redis:
    """A client of the shared real server at ``url``; skips (fails in CI) if it is down."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=30)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        client.close()
        skip_or_fail(f"no redis-server at {url}: {type(exc).__name__}")
    return client


def delete_namespace(client: redis.Redis, namespace: str) -> None:
    """Delete every key ``<namespace>:*``."""
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


class CommandCounter:
    """Counts the commands a redis-py client sends (direct calls and pipelines)."""

    def __init__(self, client: redis.Redis) -> None:
        self.commands: list[Any] = []
        self._client = client
        self._orig_execute = client.execute_command
        self._orig_pipeline = client.pipeline

    def _execute(self, *args: Any, **kwargs: Any) -> Any:
        self.commands.append(args[0] if args else None)
        return self._orig_execute(*args, **kwargs)

    def _pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.commands.append("PIPELINE")
        return self._orig_pipeline(*args, **kwargs)

    def __enter__(self) -> CommandCounter:
        self._client.execute_command = self._execute  # type: ignore[method-assign]
        self._client.pipeline = self._pipeline  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self._client.execute_command
        del self._client.pipeline

    @property
    def count(self) -> int:
        return len(self.commands)


class RedisServer:
    """A redis-server this test owns: started on a free port, stopped by its PID."""

    def __init__(self, workdir: Path, *args: str, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.workdir = workdir
        extra = list(args)
        if password is not None:
            extra += ["--requirepass", password]
        self.cmd = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / "redis.log"),
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=10, **kwargs
        )

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with contextlib.closing(self.client(socket_connect_timeout=1)) as c:
                    c.ping()
                return self
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def own_redis(workdir: Path, *args: str, password: str | None = None) -> Iterator[RedisServer]:
    """Start a redis-server of our own (skip, or fail in CI, when there is none)."""
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed")
    server = RedisServer(workdir, *args, password=password)
    try:
        yield server.start()
    finally:
        server.stop()
