"""``chi-redis outbox relay`` processes of the tests: each a direct child of the test in its
own session, killed only by the PID we started."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path

from .processes import ROOT, clean_env


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
    """The relay processes of one test (on the Redis at ``redis_url``), killed (by their own
    PIDs) at teardown."""

    def __init__(self, tmp: Path, ns: str, redis_url: str) -> None:
        self.tmp = tmp
        self.ns = ns
        self.redis_url = redis_url
        self.procs: list[RelayProcess] = []

    def start(self, dsn: str, table: str, *args: str, **env: str) -> RelayProcess:
        e = clean_env(CHI_REDIS_URL=self.redis_url, CHI_NAMESPACE=self.ns,
                      CHI_DATABASE_URL=dsn, PYTHONUNBUFFERED="1", **env)
        p = RelayProcess(["--table", table, *args], e, self.tmp / f"relay-{len(self.procs)}.log")
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
