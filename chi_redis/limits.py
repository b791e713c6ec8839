"""Bounds of the settings that size what is sent to Redis, checked where each is given.

A zero, a negative number or an absurd value of one of these would not fail loudly later:
``XREADGROUP ... BLOCK 0`` waits forever, ``XADD ... MAXLEN ~ 0`` keeps no dead letter, a
publish chunk of a million events is one script call that stalls the server, an event cap of
gigabytes lets one publish exhaust its memory.  So each is an integer in a range, and a value
outside it is a :class:`~chi_redis.ConfigError` naming the setting and the range.  The upper
bounds are far above any sensible setting; they are fixed (not configurable) because a value
past them is a mistake, not a need: Redis itself refuses values bigger than 512 MB
(``proto-max-bulk-len``).
"""

from __future__ import annotations

from .errors import ConfigError

__all__ = [
    "DAY_MS",
    "MAX_CHUNK",
    "MAX_COUNT",
    "MAX_DLQ_LEN",
    "MAX_EVENT_BYTES",
    "MAX_TTL_MS",
    "check_limit",
]

DAY_MS = 24 * 3600 * 1000
#: ``max_event_bytes``: Redis's default ``proto-max-bulk-len`` (512 MB); no bigger value
#: can be written.
MAX_EVENT_BYTES = 512 << 20
#: Events per publish-script call (``chunk_size``), per buffered flush (``batch_size``).
MAX_CHUNK = 10_000
#: ``COUNT`` of one read: prefetch windows, dead-letter pages.
MAX_COUNT = 10_000
#: Idempotency and dedupe key TTLs: a year.
MAX_TTL_MS = 365 * DAY_MS
#: Dead-letter stream cap (``XADD MAXLEN ~``).
MAX_DLQ_LEN = 100_000_000


def check_limit(value: object, field: str, lo: int, hi: int) -> int:
    """``value`` if it is an integer from ``lo`` to ``hi``, else :class:`ConfigError`."""
    if type(value) is not int or not lo <= value <= hi:
        raise ConfigError(f"{field} must be an integer from {lo} to {hi}, got {value!r}",
                          field=field)
    return value
