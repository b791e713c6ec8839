"""chi-redis: a Redis Streams runtime for distributed events and tasks."""

from __future__ import annotations

from .backend.connection import RetryPolicy, connect
from .backend.keys import Keys
from .errors import (
    BufferFullError,
    ChiError,
    ConfigError,
    DecodeError,
    InvalidNameError,
    NotFoundError,
    PayloadTooLargeError,
    PublishError,
    RedisAuthError,
    RedisError,
    RedisFullError,
    RedisUnavailableError,
    ValidationError,
)
from .events.codec import Codec
from .events.event import Event, event_type, new_event_id
from .publish.aio import AsyncEventBus
from .publish.buffered import BufferedPublisher
from .publish.bus import EventBus
from .store import EventStore
from .store.memory import MemoryEventStore
from .store.redis import RedisEventStore

__version__ = "0.1.0"

__all__ = [
    "AsyncEventBus",
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
    "PayloadTooLargeError",
    "PublishError",
    "RedisAuthError",
    "RedisError",
    "RedisEventStore",
    "RedisFullError",
    "RedisUnavailableError",
    "RetryPolicy",
    "ValidationError",
    "__version__",
    "connect",
    "event_type",
    "new_event_id",
]
