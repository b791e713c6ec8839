"""The last minutes of statistics, kept in memory by the console process, and their charts.

A thread takes :func:`chi_redis.ops.stats.collect` (what ``chi-redis stats`` prints) every
``interval`` seconds and keeps ``window`` seconds of samples.  Throughput is the growth of
each topic's ``entries-added`` counter between samples: unlike the length it is not fooled
by trimming.  Nothing is stored in Redis, so the charts start empty when the console starts.

Charts are small inline SVG polylines: no JavaScript, no chart library.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..ops.stats import Stats, collect

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = ["Sample", "Sampler", "sparkline"]

logger = logging.getLogger(__name__)


@dataclass
class Sample:
    at: float  # time.time()
    stats: Stats
    added: dict[str, int] = field(default_factory=dict)  # topic -> entries-added


class Sampler:
    """Samples the statistics in a daemon thread; :meth:`latest` is what pages show."""

    def __init__(self, bus: EventBus, interval: float = 2.0, window: float = 600.0) -> None:
        self.bus = bus
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=max(2, int(window / interval) + 1))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, keep: bool = True) -> Sample:
        """One sample now; ``keep``: add it to the history (the sampling thread's ticks
        only, so the charts' points stay evenly spaced however often pages load)."""
        stats = collect(self.bus)
        added = self._entries_added([t.topic for t in stats.topics]) if keep else {}
        sample = Sample(time.time(), stats, added)
        if keep:
            with self._lock:
                self.samples.append(sample)
        return sample

    def _entries_added(self, topics: list[str]) -> dict[str, int]:
        k = self.bus.keys

        def run() -> list[Any]:
            pipe = self.bus.client.pipeline(transaction=False)
            for t in topics:
                pipe.xinfo_stream(k.stream(t))
            out: list[Any] = pipe.execute(raise_on_error=False)
            return out

        out: dict[str, int] = {}
        for t, info in zip(topics, self.bus.call(run) if topics else [], strict=True):
            if isinstance(info, dict):
                out[t] = int(info.get("entries-added") or info.get("length") or 0)
        return out

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="chi-console-sampler",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.take()
            except Exception as exc:  # a Redis outage must not end the sampling
                logger.warning("console: sampling the statistics failed: %s", exc)
            self._stop.wait(self.interval)

    def history(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def latest(self) -> Sample:
        """A fresh sample: pages always show the numbers of now, not of the last tick."""
        return self.take(keep=False)

    def rates(self) -> dict[str, list[tuple[float, float]]]:
        """Per topic: ``(time, events/s)`` between consecutive samples."""
        hist = self.history()
        out: dict[str, list[tuple[float, float]]] = {}
        for a, b in itertools.pairwise(hist):
            dt = b.at - a.at
            for t, n in b.added.items():
                if dt > 0 and t in a.added:
                    out.setdefault(t, []).append((b.at, max(n - a.added[t], 0) / dt))
        return out

    def lags(self) -> dict[str, list[tuple[float, float]]]:
        """Per subscription: ``(time, lag)`` at each sample (an unknown lag: no point)."""
        out: dict[str, list[tuple[float, float]]] = {}
        for s in self.history():
            for sub in s.stats.subscriptions:
                if sub.lag is not None:
                    out.setdefault(sub.name, []).append((s.at, float(sub.lag)))
        return out

    def last_rate(self, topic: str) -> float | None:
        series = self.rates().get(topic)
        return series[-1][1] if series else None


def sparkline(points: list[tuple[float, float]], width: int = 160, height: int = 32) -> str:
    """An inline SVG polyline of ``points`` (time, value); empty until there are two."""
    if len(points) < 2:
        return (f'<svg class="spark" width="{width}" height="{height}" role="img"'
                ' aria-label="collecting samples"><text x="4" y="20">collecting…</text></svg>')
    t0, t1 = points[0][0], points[-1][0]
    top = max(v for _, v in points) or 1.0
    span = (t1 - t0) or 1.0
    coords = " ".join(
        f"{(t - t0) / span * (width - 2) + 1:.1f},{height - 1 - v / top * (height - 4):.1f}"
        for t, v in points)
    last = points[-1][1]
    label = f"last {last:.1f}, max {top:.1f}, over {span / 60:.1f} min"
    return (f'<svg class="spark" width="{width}" height="{height}" role="img"'
            f' aria-label="{label}"><title>{label}</title>'
            f'<polyline fill="none" stroke="currentColor" stroke-width="1.5"'
            f' points="{coords}"/></svg>')
