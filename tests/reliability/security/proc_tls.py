"""Worker-process handler of the TLS test: records each event it handled (over TLS)."""

from __future__ import annotations

from chi_redis import Event
from chi_redis.worker import bus


@bus.subscribe("tls-sub", topics=["tls"])
def handled(event: Event) -> None:
    bus.client.hset(f"{bus.namespace}:t:done", event.id, 1)
