"""Worker-process handlers registered by name for the routing-rule test.

Imported by ``dramatiq chi_redis.worker runtime.proc_routing`` with ``CHI_CONFIG`` naming the
seed's example file: its rules refer to these names.  Each handler appends the event's type
to ``<ns>:t:routed:<handler>`` in Redis.
"""

from __future__ import annotations

from chi_redis import Event
from chi_redis.worker import bus

_client = bus.client
_ns = bus.namespace


def _recorder(name: str) -> None:
    def handle(event: Event) -> None:
        _client.rpush(f"{_ns}:t:routed:{name}", event.type)

    bus.handler(name)(handle)


for _name in ("security_handler", "business_handler", "log_handler"):
    _recorder(_name)
