"""Fixtures of the CLI tests (kept here, apart from tests/conftest.py).

- ``ns``: a namespace of this test only; ``<ns>:*`` is deleted afterwards.
- ``client`` / ``bus``: the real redis-server at ``CHI_TEST_REDIS_URL`` (default
  127.0.0.1:6379/0); skipped when unreachable, failed when ``CI=true``.  Never flushed.
- ``cli``: runs ``chi-redis`` in-process through click's CliRunner, already pointed at
  this test's server and namespace; ``sh``: the same as a real subprocess.
- ``runtime``: an in-process StreamsBroker + dramatiq Worker on the test's bus.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import dramatiq.broker
import dramatiq.worker
import pytest
import redis
from click.testing import CliRunner, Result
from helpers import connect_real_redis, delete_namespace, skip_or_fail, wait_until

from chi_redis import Event, EventBus
from chi_redis.cli.main import cli as chi_cli
from chi_redis.runtime.broker import BrokerOptions, StreamsBroker

REDIS_URL = os.environ.get("CHI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[2]
CHI = Path(sys.executable).parent / "chi-redis"
FAST = {"lease_ms": 1500, "reclaim_interval_ms": 200, "block_ms": 100}





def clean_env(**extra: str) -> dict[str, str]:
    """The environment without CHI_* settings of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHI_", "dramatiq_"))}
    env.update(extra)
    return env


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ns() -> str:
    return f"tc{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(ns: str) -> Iterator[redis.Redis]:
    c = connect_real_redis(REDIS_URL)
    try:
        yield c
    finally:
        delete_namespace(c, ns)
        c.close()


@pytest.fixture
def bus(client: redis.Redis, ns: str) -> EventBus:
    return EventBus(client, namespace=ns)


class Cli:
    """``chi-redis`` through CliRunner, with ``--redis-url`` and ``--namespace`` set."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.runner = CliRunner(env={"CHI_REDIS_URL": None, "CHI_NAMESPACE": None,
                                     "CHI_CONFIG": None})

    def __call__(self, *args: str, input: str | None = None, ok: bool = True,
                 base: bool = True, env: dict[str, str | None] | None = None) -> Result:
        argv = ["--redis-url", REDIS_URL, "--namespace", self.ns, *args] if base else list(args)
        result = self.runner.invoke(chi_cli, argv, input=input, env=env,
                                    catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, (result.exit_code, result.output)
        return result

    def json_lines(self, *args: str) -> list[Any]:
        import json

        out = self("--json", *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def cli(ns: str) -> Cli:
    return Cli(ns)


class Sh:
    """``chi-redis`` as a real subprocess (the console script of this venv)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def __call__(self, *args: str, timeout: float = 60, base: bool = True,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [str(CHI)]
        if base:
            argv += ["--redis-url", REDIS_URL, "--namespace", self.ns]
        return subprocess.run(
            [*argv, *args], capture_output=True, text=True, timeout=timeout, cwd=str(ROOT),
            env=env if env is not None else clean_env(),
        )


@pytest.fixture
def sh(ns: str) -> Sh:
    if not CHI.exists():
        pytest.fail(f"{CHI} is missing: run `.venv/bin/pip install -e .`")
    return Sh(ns)


class Runtime:
    """In-process StreamsBroker + dramatiq Workers on a bus."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.workers: list[dramatiq.Worker] = []

    def broker(self, bus: EventBus | None = None, **options: Any) -> StreamsBroker:
        broker = StreamsBroker(bus or self.bus, options=BrokerOptions(**{**FAST, **options}))
        dramatiq.set_broker(broker)
        assert dramatiq.get_broker() is broker
        return broker

    def worker(self, broker: StreamsBroker, threads: int = 2) -> dramatiq.Worker:
        broker.emit_after("process_boot")
        w = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
        w.start()
        self.workers.append(w)
        return w

    def stop(self) -> None:
        while self.workers:
            self.workers.pop().stop(timeout=30_000)


@pytest.fixture
def runtime(bus: EventBus, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    monkeypatch.setattr(dramatiq.worker, "CONSUMER_RESTART_DELAY_SECS", 0.1)
    monkeypatch.setattr(dramatiq.worker, "POST_PROCESS_MESSAGE_RETRY_DELAY_SECS", 0.05)
    previous = dramatiq.broker.global_broker
    rt = Runtime(bus)
    try:
        yield rt
    finally:
        rt.stop()
        dramatiq.broker.global_broker = previous


def publish_n(bus: EventBus, n: int, type_: str = "order.created", **fields: Any) -> list[str]:
    """Publish ``n`` events ``{"i": i}`` in one batch; returns their stream ids."""
    return bus.publish_batch([Event(type=type_, data={"i": i}, **fields) for i in range(n)])


class OwnRedis:
    """A redis-server of this test on a free port, stopped by the PID we started."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        if shutil.which("redis-server") is None:
            skip_or_fail("redis-server is not installed")
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(workdir), "--logfile", str(workdir / "redis.log"), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def wait(self, password: str | None = None) -> OwnRedis:
        def up() -> bool:
            assert self.proc.poll() is None, "redis-server exited"
            c = redis.Redis(port=self.port, password=password, socket_connect_timeout=1)
            try:
                return bool(c.ping())
            except redis.ConnectionError:
                return False
            finally:
                c.close()

        wait_until(up, 20, message="own redis-server")
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
