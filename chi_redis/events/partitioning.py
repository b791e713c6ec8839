"""Which partition of a partitioned topic an event goes to (docs/design.md §15).

A topic declared with ``partitions = N`` and a partition key spreads its events over N
streams.  The key names one field of the event: ``metadata.<name>`` (a metadata key) or
``data.<name>`` (a key of a dict payload, or an attribute of a struct payload).  The
partition is ``crc32(utf-8 of the key's text) mod N``: CRC-32 (``zlib.crc32``, the same in
every Python and in most languages' standard libraries) is stable across processes,
versions and machines, unlike Python's salted ``hash()``, so every publisher of every
process puts one key's events in one partition.  Changing N moves most keys to another
partition, so it is refused unless asked for explicitly (``resize``).

Pure Python, no Redis: the declaration registry lives in :mod:`chi_redis.backend.partitions`.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec

from ..errors import ConfigError, ValidationError
from .event import Event
from .names import validate_name

__all__ = ["MAX_PARTITIONS", "Declaration", "key_text", "part_name", "partition_of"]

#: The most partitions a topic may have (each is a stream and a lease per subscription).
MAX_PARTITIONS = 1024
#: The separator between a topic and its partition number in the partition's own name.
#: Never in a name (events/names.py), so ``orders/3`` cannot be a topic of its own.
SEP = "/"


def part_name(topic: str, index: int) -> str:
    """The name partition ``index`` of ``topic`` is filed under (``orders/3``): its keys
    carry the hash tag ``{orders/3}``, so each partition is its own Redis Cluster slot."""
    return f"{topic}{SEP}{index}"


def topic_of_part(name: str) -> str:
    """The topic of a partition name (a plain topic name is returned as it is)."""
    return name.split(SEP, 1)[0]


def partition_of(key: str, partitions: int) -> int:
    """The partition of key text ``key`` among ``partitions``: CRC-32 of its UTF-8 mod N."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


def key_text(value: Any) -> str:
    """A key value as text: strings as they are, integers in decimal, anything else as
    its JSON (so ``1`` and ``"1"`` are the same key, as they are in metadata filters)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        return msgspec.json.encode(value).decode()
    return str(value)


class Declaration(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A partitioned topic: how many partitions and which field is the key.  Stored as JSON
    in the registry hash (``chi:partitions``), so every process and the CLI agree."""

    partitions: int
    key: str

    def __post_init__(self) -> None:
        if not isinstance(self.partitions, int) or not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ConfigError(f"partitions must be an integer from 1 to {MAX_PARTITIONS},"
                              f" got {self.partitions!r}", field="partitions")
        source, _, name = self.key.partition(".")
        if source not in ("metadata", "data") or not name:
            raise ConfigError(
                f"partition key must be 'metadata.<key>' or 'data.<field>', got {self.key!r}",
                field="partition_key")

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, raw: bytes | str) -> Declaration:
        return msgspec.json.decode(raw, type=cls)

    def part(self, topic: str, event: Event) -> str:
        """The partition name ``event`` of ``topic`` goes to; ValidationError (nothing
        written) when the event has no such key."""
        return part_name(topic, partition_of(key_text(self.value(event)), self.partitions))

    def parts(self, topic: str) -> list[str]:
        """The names of every partition of ``topic``, in order."""
        return [part_name(topic, i) for i in range(self.partitions)]

    def value(self, event: Event) -> Any:
        """The event's key value; ValidationError when it has none (or it is null)."""
        source, _, name = self.key.partition(".")
        holder: Any = event.metadata if source == "metadata" else event.data
        value = holder.get(name) if isinstance(holder, dict) else getattr(holder, name, None)
        if value is None:
            raise ValidationError(
                f"event {event.id} of partitioned topic {event.topic!r} has no partition key"
                f" {self.key!r}", field=self.key)
        return value


def check_topic(topic: str) -> str:
    """A topic name that may be declared partitioned."""
    return validate_name(topic, "topic")
