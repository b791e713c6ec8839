"""Handlers for the end-to-end benches, loaded by ``dramatiq chi_redis.worker e2e_handlers``.

Not a bench itself (its name does not start with ``bench_``).  Each scenario has a topic of
its own, so a subscription never sees another scenario's events; the workers of a scenario
listen only on its queues (``--queues``).

The batch subscription needs ``batch_size`` on ``EventBus.subscribe``: on a chi-redis
without batch subscriptions it is not registered (``BATCH`` is False) and the bench prints
its row as not available.
"""

from __future__ import annotations

import threading
import time

from localcluster import topics_by_slot_range

from chi_redis import Event
from chi_redis.errors import ConfigError
from chi_redis.worker import bus

LATENCY_KEY = f"{bus.namespace}:bench:latency"
FANOUT = 4


@bus.subscribe("bench-noop", topics=["bench"], max_retries=0)
def noop(event: Event) -> None:
    """Does nothing: measures the runtime, not the handler."""


@bus.subscribe("bench-sleep", topics=["benchslow"], max_retries=0)
def sleep_1ms(event: Event) -> None:
    """A handler that takes 1 ms (off the GIL, like an I/O call)."""
    time.sleep(0.001)


def _fan(event: Event) -> None:
    """One of the fan-out subscriptions: does nothing."""


for _i in range(FANOUT):
    bus.subscribe(f"bench-fan{_i}", topics=["benchfan"], max_retries=0)(_fan)


@bus.subscribe("bench-glob", topics=["benchglob"], types=["benchglob.k0.*"], max_retries=0)
def glob_match(event: Event) -> None:
    """Receives the 1 in 8 events whose type matches the glob."""


_latencies: list[str] = []  # appended by the handler threads, drained by the flusher
_flusher_lock = threading.Lock()
_flusher: list[threading.Thread] = []


def _flush_latencies() -> None:
    """Push the recorded latencies to ``LATENCY_KEY`` once the events stopped (none recorded
    for a 50 ms tick), in one RPUSH: the handler keeps them in memory until the run ends,
    as the baselines' consumers do.  An RPUSH every 50 ms while events arrive (as before)
    took the GIL beside the worker threads 20 times a second, about 2 % of the events: a
    cost of the bench, not of the runtime, and large enough to reach the 1 % tail."""
    seen = 0
    while True:
        time.sleep(0.05)
        n = len(_latencies)
        if n and n == seen:  # nothing new for a tick: the publisher has finished
            batch = _latencies[:n]
            del _latencies[:n]
            bus.client.rpush(LATENCY_KEY, *batch)
            n = 0
        seen = n


@bus.subscribe("bench-latency", topics=["benchlat"], max_retries=0)
def latency(event: Event) -> None:
    """Records publish→handler-start latency (ms) of each event."""
    lat_ms = (time.time() - event.timestamp.timestamp()) * 1000
    _latencies.append(f"{lat_ms:.4f}")
    if not _flusher:
        with _flusher_lock:
            if not _flusher:
                _flusher.append(threading.Thread(target=_flush_latencies, daemon=True))
                _flusher[0].start()


def batch_noop(events: list[Event]) -> None:
    """A batch handler that does nothing."""


try:
    bus.subscribe(
        "bench-batch", topics=["benchbatch"], max_retries=0, batch_size=100, batch_wait_ms=5,
    )(batch_noop)
    BATCH = True
except (TypeError, ConfigError):  # a chi-redis without batch subscriptions, or one that
    BATCH = False  # refuses them on a cluster (bench_cluster.py's workers run there)


# The cluster bench (bench/bench_cluster.py): one subscription on three topics whose streams
# live on the three masters of a 3-master cluster (the same topics on a single node).
SPREAD_TOPICS = topics_by_slot_range("benchspread")


@bus.subscribe("bench-spread", topics=SPREAD_TOPICS, max_retries=0)
def spread(event: Event) -> None:
    """Does nothing: the cluster's read and ack paths, not the handler, are measured."""


@bus.subscribe("bench-keyed", topics=["benchkeyed"], max_retries=0)
def keyed(event: Event) -> None:
    """No-op on the unpartitioned twin of the partitioned scenario (bench_partitions.py)."""


@bus.subscribe("bench-part", topics=["benchpart"], max_retries=0)
def partitioned(event: Event) -> None:
    """No-op on a topic of 8 partitions (bench_partitions.py declares it)."""


@bus.subscribe("bench-keyed-slow", topics=["benchkeyedslow"], max_retries=0)
def keyed_slow(event: Event) -> None:
    """1 ms on the unpartitioned twin (bench_partitions.py)."""
    time.sleep(0.001)


@bus.subscribe("bench-part-slow", topics=["benchpartslow"], max_retries=0)
def partitioned_slow(event: Event) -> None:
    """1 ms on a topic of 8 partitions (bench_partitions.py)."""
    time.sleep(0.001)
