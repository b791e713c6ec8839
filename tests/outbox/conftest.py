"""Fixtures of the outbox tests: the shared PostgreSQL, a fresh outbox table, relay processes.

- ``pg_dsn``: the shared server (``support.postgres.DATABASE_URL``); the test must carry
  the ``postgres`` marker.  Skipped when unreachable, failed when ``CI=true``.
- ``outbox_table``: a new outbox table (``outbox.init``) in that database, dropped after.
- ``relays``: ``chi-redis outbox relay`` processes (:class:`RelayProcesses`), stopped after.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support.postgres import drop_outbox, require_postgres, unique_table
from support.processes import ROOT, clean_env
from support.servers import redis_url

from chi_redis import outbox


@pytest.fixture
def pg_dsn(request: pytest.FixtureRequest) -> str:
    if request.node.get_closest_marker("postgres") is None:
        pytest.fail(f"{request.node.nodeid} uses pg_dsn without the `postgres` marker",
                    pytrace=False)
    return require_postgres()


@pytest.fixture
def outbox_table(pg_dsn: str) -> Iterator[str]:
    table = unique_table()
    with psycopg.connect(pg_dsn) as conn:
        outbox.init(conn, table)
    try:
        yield table
    finally:
        drop_outbox(pg_dsn, table)


class RelayProcess:
    """One ``python -m chi_redis.cli outbox relay`` child, output in ``log``."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chi_redis.cli", "outbox", "relay", *args], env=env,
                cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ready(self) -> bool:
        return "outbox relay: relaying table" in self.output()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def published(self) -> int:
        for line in reversed(self.output().splitlines()):
            if line.startswith("outbox relay: published "):
                return int(line.split()[3])
        return -1


class RelayProcesses:
    """The relay processes of one test, killed (by their own PIDs) at teardown."""

    def __init__(self, tmp: Path, ns: str) -> None:
        self.tmp = tmp
        self.ns = ns
        self.procs: list[RelayProcess] = []

    def start(self, dsn: str, table: str, *args: str, **env: str) -> RelayProcess:
        e = clean_env(CHI_REDIS_URL=redis_url(), CHI_NAMESPACE=self.ns, CHI_DATABASE_URL=dsn,
                      PYTHONUNBUFFERED="1", **env)
        p = RelayProcess(["--table", table, *args], e, self.tmp / f"relay-{len(self.procs)}.log")
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            p.kill()


@pytest.fixture
def relays(tmp_path: Path, ns: str) -> Iterator[RelayProcesses]:
    r = RelayProcesses(tmp_path, ns)
    try:
        yield r
    finally:
        r.stop()
