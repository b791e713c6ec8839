"""Packing replayed entries for ``lua/replay_topic.lua`` (replay's republish target).

Re-exported by :mod:`chi_redis.publish.writer`, where the republish call is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from ..backend.keys import Keys
from ..events.event import new_event_id
from ..events.nesting import check_depth

if TYPE_CHECKING:
    from ..store.history import Item

__all__ = ["Call", "checkpoint_argv", "pack_republish"]

Call = tuple[list[str], list[bytes | str | int]]

_JSON = msgspec.json.Encoder()
_META = msgspec.json.Decoder(dict[str, Any])


def pack_republish(keys: Keys, items: Iterable[Item]) -> Call:
    """KEYS (after the first three) and ARGV (after the checkpoint) of a republish call.

    Each stream entry read back (:data:`chi_redis.store.history.Item`) becomes a new event
    (new id) whose metadata carries ``chi_replay=true`` and ``chi_replay_of=<original
    id>``; the payload is copied as stored, in its own encoding.  The layout is documented
    in ``lua/replay_topic.lua``.
    """
    klist: list[str] = []
    argv: list[bytes | str | int] = []
    for topic, _sid, f, _ in items:
        raw_meta = f.get("meta", b"{}")
        try:
            check_depth(b"js", raw_meta)
            meta = _META.decode(raw_meta) if raw_meta != b"{}" else {}
        except msgspec.DecodeError:
            meta = {}
        meta["chi_replay"] = True
        meta["chi_replay_of"] = f.get("id", b"").decode(errors="replace")
        klist += (keys.stream(topic), keys.index(topic), keys.ids(topic))
        argv += (
            topic, new_event_id(), f.get("type", b""), f.get("ts", b"0"), f.get("ver", b"1.0"),
            _JSON.encode(meta), f.get("enc", b"mp"), f.get("data", b""),
        )
    return klist, argv


def checkpoint_argv(fields: Mapping[str, str]) -> list[bytes | str | int]:
    """The ARGV head the replay scripts take: the number of checkpoint field/value pairs
    (0: no checkpoint), then the pairs (``lua/replay_topic.lua``, ``lua/replay_queue.lua``)."""
    out: list[bytes | str | int] = [str(len(fields))]
    for k, v in fields.items():
        out += (k, v)
    return out
