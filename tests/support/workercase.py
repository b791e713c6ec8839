"""One worker-fault case (tests/reliability): an own redis-server, a :class:`History`, and
``dramatiq chi_redis.worker runtime.proc_faults`` processes declaring only the case's
subscriptions (``CHI_TEST_SUBS``).

Handlers of ``runtime.proc_faults`` log ``<subscription>:<event id>``; :meth:`WorkerCase.publish`
logs ``invoke``/``ok`` under the same names for every subscription the event goes to, so
the checker counts each subscription's copy of an event on its own.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
import redis

from chi_redis import Event, EventBus

from .history import History
from .processes import WorkerProcess, Workers
from .runtime import drained, wait_groups
from .servers import RedisServer
from .waiting import wait_until

MODULE = "runtime.proc_faults"
#: The test knobs of :func:`support.processes.worker_env` (ms).
LEASE_MS = 1500
RECLAIM_INTERVAL_MS = 300
MAX_DELIVERIES = 3


class WorkerCase:
    """The servers, history and workers of one case; :meth:`close` stops what it started."""

    def __init__(self, tmp: Path, server: RedisServer, ns: str) -> None:
        self.server = server
        self.client = server.client()
        self.bus = EventBus(self.client, namespace=ns)
        self.keys = self.bus.keys
        self.ns = ns
        self.history = History(tmp / "history")
        self.workers = Workers(tmp, server.url, ns)

    def start(self, subs: Iterable[str], threads: int = 2, **env: Any) -> WorkerProcess:
        """A worker process declaring ``subs`` (not waited for: see :meth:`ready`)."""
        return self.workers.start(MODULE, threads=threads, CHI_TEST_SUBS=",".join(subs),
                                  **self.history.env(), **env)

    def ready(self, subs: dict[str, list[str]], *procs: WorkerProcess) -> None:
        """Wait until ``procs`` are ready and each subscription's groups exist."""
        wait_until(lambda: all("is ready for action" in p.output() for p in procs), 120,
                   "worker processes ready", interval=0.1)
        wait_groups(self.client, self.bus, subs, timeout=60)

    def publish(self, events: list[Event], subs: Iterable[str]) -> list[str]:
        """Publish ``events`` (one batch), logged in the history for each of ``subs``."""
        names = list(subs)
        for e in events:
            for s in names:
                self.history.invoke(f"{s}:{e.id}")
        ids = self.bus.publish_batch(events)
        for e in events:
            for s in names:
                self.history.ok(f"{s}:{e.id}")
        return ids

    def deliveries(self) -> Counter[str]:
        """Deliveries per ``<subscription>:<event id>`` (dedupe not yet applied)."""
        return Counter(key for _, key, _, _ in self.lines("delivery-*.log"))

    def lines(self, pattern: str = "handler-*.log") -> list[tuple[str, str, int, float]]:
        """``(kind, key, pid, monotonic time)`` of each line of the history folder's
        ``pattern`` files: ``start``/``commit`` (handlers) or ``deliver`` (deliveries)."""
        out = []
        for path in sorted(self.history.folder.glob(pattern)):
            for line in path.read_text().splitlines():
                kind, key, stamp = line.split("\t")
                pid, at = stamp.split()
                out.append((kind, key, int(pid), float(at)))
        return out

    def committed(self, keys: Iterable[str]) -> bool:
        done = self.history.commits()
        return all(k in done for k in keys)

    def drained(self, sub: str, topics: list[str]) -> bool:
        return drained(self.client, self.bus, sub, topics)

    def wait_drained(self, subs: dict[str, list[str]], timeout: float = 60) -> None:
        for sub, topics in subs.items():
            wait_until(lambda s=sub, t=topics: self.drained(s, t), timeout,
                       f"{sub}: nothing pending, nothing unread", interval=0.1)

    def pending(self, sub: str, topic: str) -> int:
        return int(self.client.xpending(self.keys.stream(topic), sub)["pending"])

    def consumers(self, sub: str, topic: str) -> list[dict[str, Any]]:
        with contextlib.suppress(redis.ResponseError):
            return [{"name": c["name"].decode() if isinstance(c["name"], bytes) else c["name"],
                     "pending": int(c["pending"]), "idle": int(c["idle"])}
                    for c in self.client.xinfo_consumers(self.keys.stream(topic), sub)]
        return []

    def dlq(self, sub: str) -> int:
        return int(self.client.xlen(self.keys.dlq(sub)))

    def close(self) -> None:
        self.workers.stop()
        self.client.close()


def worker_child(proc: WorkerProcess, timeout: float = 60) -> int:
    """The PID of the Dramatiq worker child of ``proc`` (the process running handlers)."""
    def child() -> int | None:
        kids = proc.children()
        return kids[0] if kids else None

    return int(wait_until(child, timeout, "the worker child process", interval=0.05))


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of ``pids`` (processes that are gone count 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total
