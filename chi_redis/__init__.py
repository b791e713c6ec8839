"""chi-redis: a Redis Streams runtime for distributed events and tasks.

The names that need redis-py (the buses, the Redis store, ``connect``) are imported on
first use: redis-py 8 imports its asyncio client in ``redis/__init__``, so importing it
here would cost every ``import chi_redis`` (and every ``chi-redis --help``) about 80 ms.
:data:`_LAZY` is the explicit table of those names; everything else is imported eagerly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .backend.keys import Keys
from .errors import (
    BatchFailed,
    BufferFullError,
    ChiError,
    ConfigError,
    DecodeError,
    InvalidNameError,
    NotFoundError,
    NotReplicatedError,
    PayloadTooLargeError,
    PublishError,
    RedisAuthError,
    RedisError,
    RedisFullError,
    RedisTLSError,
    RedisUnavailableError,
    ValidationError,
)
from .events.codec import Codec
from .events.event import Event, event_type, new_event_id
from .store import EventStore
from .store.memory import MemoryEventStore

if TYPE_CHECKING:
    from .backend.connection import RetryPolicy, connect
    from .publish.aio import AsyncEventBus
    from .publish.buffered import BufferedPublisher
    from .publish.bus import EventBus
    from .store.redis import RedisEventStore

#: Public name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "AsyncEventBus": "chi_redis.publish.aio",
    "BufferedPublisher": "chi_redis.publish.buffered",
    "EventBus": "chi_redis.publish.bus",
    "RedisEventStore": "chi_redis.store.redis",
    "RetryPolicy": "chi_redis.backend.connection",
    "connect": "chi_redis.backend.connection",
}


def __getattr__(name: str) -> Any:
    """Import a name of :data:`_LAZY` on first use (PEP 562) and keep it."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chi_redis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "AsyncEventBus",
    "BatchFailed",
    "BufferFullError",
    "BufferedPublisher",
    "ChiError",
    "Codec",
    "ConfigError",
    "DecodeError",
    "Event",
    "EventBus",
    "EventStore",
    "InvalidNameError",
    "Keys",
    "MemoryEventStore",
    "NotFoundError",
    "NotReplicatedError",
    "PayloadTooLargeError",
    "PublishError",
    "RedisAuthError",
    "RedisError",
    "RedisEventStore",
    "RedisFullError",
    "RedisTLSError",
    "RedisUnavailableError",
    "RetryPolicy",
    "ValidationError",
    "__version__",
    "connect",
    "event_type",
    "new_event_id",
]
