"""Worker-process handlers of the health endpoint test: one subscription on ``order``."""

from __future__ import annotations

from chi_redis import Event
from chi_redis.worker import bus


@bus.subscribe("orders", topics=["order"])
def orders(event: Event) -> None:
    bus.client.incr(f"{bus.namespace}:t:handled")
