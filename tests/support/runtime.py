"""The in-process runtime of the tests: StreamsBrokers and Dramatiq Workers on a bus.

:func:`in_process_runtime` is what the ``rt`` (tests/runtime) and ``runtime`` (tests/cli)
fixtures yield: it shortens Dramatiq's restart delays (:func:`patch_dramatiq`), restores
the global broker afterwards and stops every Worker before the keys are deleted.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import dramatiq
import dramatiq.broker
import dramatiq.worker
import pytest
import redis

from chi_redis import Event, EventBus
from chi_redis.runtime.broker import BrokerOptions, StreamsBroker

from .waiting import wait_until

# Test knobs: a short lease and sweep, and short blocking reads, so reclaims and shutdowns
# happen within a test's deadlines.
FAST: dict[str, int] = {"lease_ms": 1500, "reclaim_interval_ms": 200, "block_ms": 100}


def patch_dramatiq(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorten Dramatiq's consumer-restart and post-process retry delays for this test,
    and put the global broker back afterwards (connection-error tests would otherwise wait
    seconds, and a test's broker would leak into the next)."""
    monkeypatch.setattr(dramatiq.worker, "CONSUMER_RESTART_DELAY_SECS", 0.1)
    monkeypatch.setattr(dramatiq.worker, "POST_PROCESS_MESSAGE_RETRY_DELAY_SECS", 0.05)
    monkeypatch.setattr(dramatiq.broker, "global_broker", dramatiq.broker.global_broker)


class Recorder:
    """Thread-safe record of handler calls."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[Any] = []

    def add(self, item: Any) -> None:
        with self.lock:
            self.calls.append(item)

    def __len__(self) -> int:
        with self.lock:
            return len(self.calls)

    def items(self) -> list[Any]:
        with self.lock:
            return list(self.calls)

    def counts(self) -> Counter[Any]:
        with self.lock:
            return Counter(self.calls)


class Runtime:
    """In-process workers on one bus: brokers and Dramatiq Workers.

    Every broker built here has the test knobs (``FAST``); ``stop()`` stops every Worker.
    ``kind`` names the backend ("fake", "real", …); ``threads`` is the default pool size.
    """

    def __init__(self, bus: EventBus, kind: str = "real", threads: int = 4) -> None:
        self.bus = bus
        self.client: Any = bus.client
        self.ns = bus.namespace
        self.kind = kind
        self.threads = threads
        self.workers: list[dramatiq.Worker] = []
        self.brokers: list[StreamsBroker] = []

    def new_bus(self) -> EventBus:
        """Another bus on the same client and namespace (a second "process")."""
        return EventBus(self.client, namespace=self.ns)

    def broker(self, bus: EventBus | None = None, *, set_global: bool = True,
               **options: Any) -> StreamsBroker:
        """A StreamsBroker on ``bus`` (default: this runtime's) with ``FAST`` + ``options``."""
        broker = StreamsBroker(bus or self.bus, options=BrokerOptions(**{**FAST, **options}))
        self.brokers.append(broker)
        if set_global:
            dramatiq.set_broker(broker)
            assert dramatiq.get_broker() is broker
        return broker

    def worker(self, broker: StreamsBroker, threads: int | None = None) -> dramatiq.Worker:
        """Boot ``broker`` (``process_boot``, as the dramatiq CLI does) and start a Worker."""
        broker.emit_after("process_boot")
        w = dramatiq.Worker(broker, worker_threads=threads or self.threads, worker_timeout=100)
        w.start()
        self.workers.append(w)
        return w

    def stop(self, worker: dramatiq.Worker | None = None) -> None:
        """Stop ``worker``, or every Worker started here."""
        for w in [worker] if worker is not None else list(self.workers):
            if w in self.workers:
                self.workers.remove(w)
                w.stop(timeout=30_000)

    def publish(self, *events: Event) -> list[str]:
        return [self.bus.publish(e) for e in events]


@contextlib.contextmanager
def in_process_runtime(bus: EventBus, monkeypatch: pytest.MonkeyPatch, *, kind: str = "real",
                       threads: int = 4) -> Iterator[Runtime]:
    """A :class:`Runtime` on ``bus`` with Dramatiq patched; its Workers stopped on exit."""
    patch_dramatiq(monkeypatch)
    runtime = Runtime(bus, kind=kind, threads=threads)
    try:
        yield runtime
    finally:
        runtime.stop()


# group state ---------------------------------------------------------------------------------
def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def group_info(client: redis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    """XINFO GROUPS of ``group`` (with ``lag`` computed when the server gives none)."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return None
    for g in groups:
        if _s(g["name"]) == group:
            info = {k: g[k] for k in g}
            if info.get("lag") is None:
                last = _s(g["last-delivered-id"])
                info["lag"] = len(client.xrange(stream, f"({last}", "+") or [])
            return info
    return None


def drained(client: redis.Redis, bus: EventBus, sub: str, topics: Iterable[str]) -> bool:
    """Nothing pending and nothing unread for ``sub`` on its topics and its private stream."""
    streams = [bus.keys.stream(t) for t in topics] + [bus.keys.queue(sub)]
    for s in streams:
        info = group_info(client, s, sub)
        if info is None:
            if s == bus.keys.queue(sub) or not client.exists(s):
                continue
            return False
        if info["pending"] or info["lag"]:
            return False
    return not client.zcard(bus.keys.delayed(sub))


def dlq_len(client: redis.Redis, bus: EventBus, sub: str) -> int:
    """How many dead letters ``sub`` has."""
    return int(client.xlen(bus.keys.dlq(sub)))


def wait_groups(client: redis.Redis, bus: EventBus, subs: dict[str, list[str]],
                timeout: float = 60) -> None:
    """Wait until every subscription's group exists on each of its topic streams."""

    def ready() -> bool:
        return all(
            group_info(client, bus.keys.stream(t), sub) is not None
            for sub, topics in subs.items() for t in topics
        )

    wait_until(ready, timeout, f"consumer groups {sorted(subs)}", interval=0.1)
