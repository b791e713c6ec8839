"""Worker-process handlers for the poison test: ``poison.exit`` kills the worker process
(``os._exit``: no Retries, no nack), ``poison.ok`` is handled normally."""

from __future__ import annotations

import os

from chi_redis import Event
from chi_redis.worker import bus

_client = bus.client
_ns = bus.namespace


@bus.subscribe("poison", types=["poison.*"], max_retries=2, min_backoff_ms=10,
               max_backoff_ms=50)
def poison(event: Event) -> None:
    _client.hincrby(f"{_ns}:t:starts", event.id, 1)
    if event.type == "poison.exit":
        os._exit(1)
    _client.hincrby(f"{_ns}:t:done", event.id, 1)
