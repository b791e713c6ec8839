"""Fixtures of the CLI tests (the shared ones are in tests/conftest.py).

- ``client`` / ``bus``: here always the real redis-server at ``CHI_TEST_REDIS_URL``
  (default 127.0.0.1:6379/0); skipped when unreachable, failed when ``CI=true``.  Never
  flushed: ``<ns>:*`` is deleted afterwards.
- ``cli``: runs ``chi-redis`` in-process through click's CliRunner, already pointed at
  this test's server and namespace; ``sh``: the same as a real subprocess.
- ``runtime``: :func:`support.in_process_runtime` on the test's bus (2 worker threads).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from support.processes import ROOT, clean_env
from support.runtime import Runtime, in_process_runtime
from support.servers import REDIS_URL

from chi_redis import Event, EventBus
from chi_redis.cli.main import cli as chi_cli

CHI = Path(sys.executable).parent / "chi-redis"


@pytest.fixture
def client(real_client: redis.Redis) -> redis.Redis:
    """The real server (the CLI tests need one)."""
    return real_client


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


@pytest.fixture
def runtime(bus: EventBus, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    with in_process_runtime(bus, monkeypatch, threads=2) as rt:
        yield rt


def publish_n(bus: EventBus, n: int, type_: str = "order.created", **fields: Any) -> list[str]:
    """Publish ``n`` events ``{"i": i}`` in one batch; returns their stream ids."""
    return bus.publish_batch([Event(type=type_, data={"i": i}, **fields) for i in range(n)])
