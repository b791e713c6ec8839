"""KEYS and ARGV of the publish script (``lua/publish.lua``) for a chunk of events."""

from __future__ import annotations

from collections.abc import Sequence

from ..backend.keys import Keys
from ..errors import ValidationError
from ..events.codec import Codec
from ..events.event import Event
from .single import check_idempotency_key

__all__ = ["Call", "pack"]

#: KEYS and ARGV of one publish-script call.
Call = tuple[list[str], list[bytes | str | int]]


def pack(
    keys: Keys,
    codec: Codec,
    events: Sequence[Event],
    idempotency_keys: Sequence[str | None] | None,
    ttl_ms: int,
    archive: bool = False,
    names: Sequence[str] | None = None,
) -> Call:
    """KEYS and ARGV of one publish-script call for ``events`` (validated and encoded first).

    Raises before anything is sent: nothing of an invalid chunk reaches Redis.  The layout
    is documented in ``lua/publish.lua``: each topic's keys are passed once per chunk and
    each event costs seven arguments, so packing stays cheap in Python and in Redis.
    ``names``: the name each event is filed under when it is not its topic (the partition
    of a partitioned topic, ``orders/3``: docs/design.md §15).
    """
    slots: dict[str, int] = {}
    topic_keys: list[str] = []
    topic_names: list[str] = []
    idem_keys: list[str] = []
    body: list[bytes | str | int] = []
    parts = codec.encode_parts
    with_idem = bool(idempotency_keys) and any(k is not None for k in idempotency_keys or ())
    for i, event in enumerate(events):
        if not isinstance(event, Event):
            raise ValidationError(
                f"expected an Event, got {type(event).__name__}", field=f"events[{i}]"
            )
        topic = names[i] if names is not None else event.topic
        slot = slots.get(topic)
        if slot is None:
            slot = slots[topic] = len(topic_names) + 1
            topic_names.append(topic)
            topic_keys += (keys.stream(topic), keys.index(topic), keys.ids(topic))
        body.append(slot)
        body += parts(event)
        if with_idem:
            idem = idempotency_keys[i] if idempotency_keys else None
            if idem is None:
                body.append(0)
            else:
                idem_keys.append(keys.idem(topic, check_idempotency_key(idem)))
                body.append(len(idem_keys))
    klist = [*topic_keys, *idem_keys]
    head: list[bytes | str | int] = [
        ttl_ms,
        len(events),
        len(topic_names),
        b"1" if archive else b"0",
        codec.enc_tag,
        b"1" if with_idem else b"0",
        *topic_names,
    ]
    return klist, head + body
