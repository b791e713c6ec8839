"""A producer at a steady rate, and samplers of group lag, pending count and worker RSS:
shared by the backpressure case (F13) and the slow tier (F8, repeated kills, the soak)."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis
from support.history import History
from support.processes import WorkerProcess
from support.runtime import group_info

from chi_redis import Event, EventBus


class SteadyProducer(threading.Thread):
    """Publishes ``rate`` events per second (in ticks of 50 ms) until :meth:`stop` or
    ``limit`` events; every attempt goes into ``history``."""

    def __init__(self, bus: EventBus, history: History, rate: float,
                 limit: int | None = None, topic: str = "steady", size: int = 64) -> None:
        super().__init__(daemon=True)
        self.bus, self.history, self.rate, self.limit = bus, history, rate, limit
        self.topic, self.pad = topic, "x" * size
        self.sent = 0
        self.errors: list[str] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)

    def run(self) -> None:
        began = time.monotonic()
        while not self._halt.is_set() and (self.limit is None or self.sent < self.limit):
            due = int((time.monotonic() - began) * self.rate) - self.sent
            if self.limit is not None:
                due = min(due, self.limit - self.sent)
            events = [Event(type=f"{self.topic}.tick", data={"n": self.sent + i, "pad": self.pad})
                      for i in range(max(due, 0))]
            for e in events:
                self.history.invoke(e.id)
            if events:
                try:
                    self.bus.publish_batch(events)
                except Exception as exc:  # a fault case may refuse publishes: counted
                    self.errors.append(type(exc).__name__)
                    written = getattr(exc, "written", {}) or {}
                    for i, e in enumerate(events):
                        (self.history.ok if i in written else self.history.info)(e.id)
                else:
                    for e in events:
                        self.history.ok(e.id)
                self.sent += len(events)
            self._halt.wait(0.05)


@dataclass
class Samples:
    """Time series of one run: (seconds since start, value)."""

    lag: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    pending: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    rss: list[tuple[float, int]] = field(default_factory=list)
    used_memory: list[tuple[float, int]] = field(default_factory=list)

    def peak(self, series: list[tuple[float, int]]) -> int:
        return max((v for _t, v in series), default=0)


def rss_of(worker: WorkerProcess) -> int:
    """Resident memory of the worker's forked children (the Dramatiq worker processes)."""
    total = 0
    for pid in worker.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total


class Sampler(threading.Thread):
    """Every ``interval`` s: lag and pending of ``groups`` on ``stream``, RSS of ``workers``,
    Redis ``used_memory``."""

    def __init__(self, client: redis.Redis, stream: str, groups: list[str],
                 workers: list[WorkerProcess], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.client, self.stream, self.groups = client, stream, groups
        self.workers, self.interval = workers, interval
        self.samples = Samples(lag={g: [] for g in groups}, pending={g: [] for g in groups})
        self._halt = threading.Event()
        self.began = time.monotonic()

    def stop(self) -> Samples:
        self._halt.set()
        self.join(timeout=60)
        return self.samples

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def sample(self) -> None:
        t = round(time.monotonic() - self.began, 2)
        s = self.samples
        for g in self.groups:
            info: Any = group_info(self.client, self.stream, g)
            if info is not None:
                s.lag[g].append((t, int(info["lag"] or 0)))
                s.pending[g].append((t, int(info["pending"])))
        rss = sum(rss_of(w) for w in self.workers)
        if rss:
            s.rss.append((t, rss))
        s.used_memory.append((t, int(self.client.info("memory")["used_memory"])))


def slope_per_s(series: list[tuple[float, int]]) -> float:
    """Least-squares slope of ``series`` (value per second): the trend of a lag curve."""
    n = len(series)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in series) / n
    mv = sum(v for _, v in series) / n
    var = sum((t - mt) ** 2 for t, _ in series)
    return sum((t - mt) * (v - mv) for t, v in series) / var if var else 0.0


def thin(series: list[tuple[float, int]], points: int = 10) -> list[tuple[float, int]]:
    """At most ``points`` samples of ``series``, evenly spread (for the figures' table)."""
    if len(series) <= points:
        return series
    step = (len(series) - 1) / (points - 1)
    return [series[round(i * step)] for i in range(points)]
