"""A handler module for the `chi-redis worker` subprocess test."""

from __future__ import annotations

from chi_redis import Event
from chi_redis.worker import bus


@bus.subscribe("echo", types=["ping.*"], start="earliest")
def echo(event: Event) -> None:
    bus.client.rpush(f"{bus.namespace}:test:echo", event.id)
