"""chi-redis: a Redis Streams runtime for distributed events and tasks."""

from __future__ import annotations

from .abus import AsyncEventBus
from .buffered import BufferedPublisher
from .bus import EventBus
from .codec import Codec
from .connection import RetryPolicy, connect
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
from .event import Event, event_type, new_event_id
from .keys import Keys
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
