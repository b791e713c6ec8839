"""What the server and network fault cases share: a history, worker processes running the
``hist`` handler (tests/runtime/proc_server_faults.py) and publishers' buses."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any

import psutil
import redis

from chi_redis import EventBus
from chi_redis.backend.connection import RetryPolicy

from .history import History
from .processes import WorkerProcess, wait_ready, worker_env
from .runtime import group_info
from .waiting import wait_until

MODULE = "runtime.proc_server_faults"
SUB = "hist"
TOPIC = "hist"


class FaultCase:
    """One case: its history folder, its worker processes (stopped by :meth:`stop`)."""

    def __init__(self, tmp: Path, ns: str) -> None:
        self.tmp = tmp
        self.ns = ns
        self.history = History(tmp / "history")
        self.workers: list[WorkerProcess] = []
        self.buses: list[EventBus] = []

    def worker(self, url: str, threads: int = 2, **env: Any) -> WorkerProcess:
        """Start a worker process of the ``hist`` subscription against ``url``."""
        w = WorkerProcess(MODULE, worker_env(url, self.ns, **self.history.env(), **env),
                          self.tmp / f"worker-{len(self.workers)}.log", threads=threads)
        self.workers.append(w.start())
        return w

    def ready(self, client: redis.Redis) -> None:
        wait_ready(*self.workers)
        stream = self.stream()
        wait_until(lambda: group_info(client, stream, SUB) is not None, 60, "group hist",
                   interval=0.05)

    def bus(self, url: str, *, socket_timeout: float = 1.0,
            retry: RetryPolicy | None = None) -> EventBus:
        """A publisher's bus with a short socket timeout (a fault shows within a second)."""
        bus = EventBus.from_url(url, namespace=self.ns, socket_timeout=socket_timeout,
                                socket_connect_timeout=1.0, retry=retry)
        self.buses.append(bus)
        return bus

    def stream(self) -> str:
        return f"{self.ns}:{{{TOPIC}}}:stream"

    def wait_committed(self, timeout: float = 60) -> None:
        wait_until(self.history.committed_all_ok, timeout, "every ok publish committed",
                   interval=0.1)

    def logs(self) -> str:
        return "\n".join(w.output() for w in self.workers)

    def stop(self) -> None:
        for bus in self.buses:
            with contextlib.suppress(Exception):
                bus.close()
        for w in self.workers:
            w.stop()


_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


def error_lines(log: str) -> list[str]:
    """Log lines at ERROR or CRITICAL."""
    return [ln for ln in log.splitlines() if "] [ERROR]" in ln or "] [CRITICAL]" in ln
            or " ERROR " in ln or " CRITICAL " in ln]


def max_per_second(lines: list[str]) -> int:
    """The most lines that carry the same one-second timestamp (0 without stamps)."""
    counts: dict[str, int] = {}
    for ln in lines:
        m = _STAMP.match(ln)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return max(counts.values(), default=0)


def cpu_seconds(w: WorkerProcess) -> float:
    """User + system CPU seconds of a worker process and its children so far."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        procs = [psutil.Process(w.pid), *psutil.Process(w.pid).children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def timed(fn: Any) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def handler_rows(case: FaultCase, kind: str = "commit") -> list[tuple[str, str, int, int]]:
    """``(event id, entry id, attempt, pid)`` of every handler ``kind`` line of the case
    (tests/runtime/proc_server_faults.py writes them)."""
    rows = []
    for path in sorted(case.history.folder.glob("handler-*.log")):
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 5 and parts[0] == kind:
                rows.append((parts[1], parts[2], int(parts[3]), int(parts[4])))
    return rows
