"""Worker-process handlers for the load and Redis-restart tests.

Imported by ``dramatiq chi_redis.worker runtime.proc_load``: each handled event increments
``<ns>:t:done:<subscription>`` (a hash keyed by event id) in Redis, so the test can count
how often every event ran in every subscription.
"""

from __future__ import annotations

from chi_redis import Event
from chi_redis.worker import bus

_client = bus.client
_ns = bus.namespace


@bus.subscribe("load-a", types=["load.created"])
def load_a(event: Event) -> None:
    _client.hincrby(f"{_ns}:t:done:load-a", event.id, 1)


@bus.subscribe("load-b", types=["load.*"])
def load_b(event: Event) -> None:
    _client.hincrby(f"{_ns}:t:done:load-b", event.id, 1)
