"""Handlers of the console's browser tests, run by a real worker subprocess.

- ``audit`` records every ``order.*`` event it handles (a counter per event id, so a
  delivery twice shows as 2);
- ``payments`` fails every ``pay.*`` event while ``<ns>:test:broken`` exists (no retries:
  straight to its dead letters), and records it once that key is gone.
"""

from __future__ import annotations

from chi_redis import Event
from chi_redis.worker import bus


@bus.subscribe("audit", types=["order.*"], start="earliest")
def audit(event: Event) -> None:
    bus.client.hincrby(f"{bus.namespace}:test:audit", event.id, 1)


@bus.subscribe("payments", types=["pay.*"], start="earliest", max_retries=0)
def payments(event: Event) -> None:
    if bus.client.exists(f"{bus.namespace}:test:broken"):
        raise RuntimeError("card processor refused: api_key=sk_live_secret")
    bus.client.hincrby(f"{bus.namespace}:test:payments", event.id, 1)
