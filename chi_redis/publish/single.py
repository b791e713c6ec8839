"""Publishing one event (``EventBus.publish``): the packing of a ``lua/publish_one.lua``
call, shared by the sync and asyncio writers.

The single publish is one round trip per event, so every microsecond of the client's
work shows in its rate: the keys are cached per topic and every argument is handed over
as bytes, which both redis-py and :meth:`Script.run_direct` send as they are.
"""

from __future__ import annotations

from ..backend.keys import Keys
from ..backend.scripts import script
from ..errors import ValidationError
from ..events.codec import Codec
from ..events.event import Event
from ..limits import MAX_TTL_MS, check_limit
from ..observe import metrics

__all__ = ["OnePacking", "check_idempotency_key", "count_one"]

_PUBLISHED = "chi_events_published_total"
#: Topics whose key names are cached per writer; past this the cache starts over.
_MAX_CACHED_TOPICS = 4096


def check_idempotency_key(idem: object) -> str:
    if not isinstance(idem, str) or not idem or len(idem) > 256 or not idem.isprintable():
        raise ValidationError(
            "idempotency key must be a printable string of 1-256 characters",
            field="idempotency_key",
        )
    return idem


def count_one(topic: str) -> None:
    """``chi_events_published_total`` for one written event."""
    if metrics.enabled():
        metrics.labelled(_PUBLISHED, topic).inc()


class OnePacking:
    """KEYS and ARGV of ``lua/publish_one.lua`` calls, key names cached per topic."""

    def __init__(self, keys: Keys, codec: Codec, idempotency_ttl_ms: int) -> None:
        self.keys = keys
        self.codec = codec
        self.idempotency_ttl_ms = check_limit(idempotency_ttl_ms, "idempotency_ttl_ms", 1,
                                              MAX_TTL_MS)
        self.one_script = script("publish_one")
        self._ttl = b"%d" % idempotency_ttl_ms
        self._topic_keys: dict[str, tuple[bytes, ...]] = {}

    def pack_one(
        self, event: Event, idempotency_key: str | None, name: str | None = None
    ) -> tuple[list[bytes], list[bytes]]:
        """KEYS and ARGV of a ``lua/publish_one.lua`` call: one event, 7 arguments (8 with
        an idempotency key), validated and encoded first, all bytes; ``name``: the partition it
        goes to, when its topic is partitioned."""
        if not isinstance(event, Event):
            raise ValidationError(
                f"expected an Event, got {type(event).__name__}", field="events[0]"
            )
        id_, type_, ts, ver, meta, data = self.codec.encode_parts(event)
        topic = name or event.topic
        topic_keys = self._topic_keys.get(topic)
        if topic_keys is None:
            if len(self._topic_keys) >= _MAX_CACHED_TOPICS:
                self._topic_keys.clear()
            k = self.keys
            names = (k.stream(topic), k.index(topic), k.ids(topic))
            topic_keys = self._topic_keys[topic] = tuple(n.encode() for n in names)
        keys = list(topic_keys)
        argv = [
            id_.encode(), type_.encode(), b"%d" % ts, ver.encode(), meta, self.codec.enc_tag, data
        ]
        if idempotency_key is not None:
            keys.append(self.keys.idem(topic, check_idempotency_key(idempotency_key)).encode())
            argv.append(self._ttl)
        return keys, argv
