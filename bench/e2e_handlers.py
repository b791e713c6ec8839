"""Handlers for bench_e2e.py, loaded by ``dramatiq chi_redis.worker e2e_handlers``.

Not a bench itself (its name does not start with ``bench_``, so no runner picks it up).
"""

from __future__ import annotations

import time

from chi_redis import Event
from chi_redis.worker import bus

LATENCY_KEY = f"{bus.namespace}:bench:latency"


@bus.subscribe("bench-noop", topics=["bench"], max_retries=0)
def noop(event: Event) -> None:
    """Does nothing: measures the runtime, not the handler."""


@bus.subscribe("bench-latency", topics=["benchlat"], max_retries=0)
def latency(event: Event) -> None:
    """Records publish→handler-start latency (ms) of each event."""
    lat_ms = (time.time() - event.timestamp.timestamp()) * 1000
    bus.client.rpush(LATENCY_KEY, f"{lat_ms:.4f}")
