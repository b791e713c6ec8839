"""Every Redis key name chi-redis uses, built here and nowhere else.

All keys of one topic share the hash tag ``{<topic>}`` and all keys of one subscription
share ``{<sub>}``, so the multi-key scripts of a topic (or a subscription) stay in one
Redis Cluster slot.  Names are validated before they get here, so no key can contain
glob characters, braces, colons or whitespace from user input.  The two free-text parts,
idempotency keys and event ids (any printable text), go in as they are when made of plain
characters (:data:`SAFE_PART`: what UUIDs and usual keys are made of) and as ``#`` plus
their SHA-256 otherwise, so that no key holds ``*?[]{}``, a backslash or a space either.
"""

from __future__ import annotations

import hashlib
import re

from ..events.names import validate_name

__all__ = ["SAFE_PART", "Keys", "key_part"]

#: Free text kept as it is in a key name; anything else is hashed (:func:`key_part`).
SAFE_PART = re.compile(r"[A-Za-z0-9._:@/+=-]{1,256}")


def key_part(text: str) -> str:
    """``text`` if it is made of :data:`SAFE_PART` characters, else ``#<sha256 hex>``
    (``#`` is never in a kept part, so the two forms cannot collide)."""
    if SAFE_PART.fullmatch(text):
        return text
    return "#" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Keys:
    """Key names under one namespace (default ``chi``)."""

    __slots__ = ("ns",)

    def __init__(self, namespace: str = "chi") -> None:
        self.ns = validate_name(namespace, "namespace")

    def __repr__(self) -> str:
        return f"Keys({self.ns!r})"

    # topics ---------------------------------------------------------------------------
    def stream(self, topic: str) -> str:
        """The topic's event stream."""
        return f"{self.ns}:{{{topic}}}:stream"

    def index(self, topic: str) -> str:
        """The topic's time index: member = stream id, score = event time (µs since epoch)."""
        return f"{self.ns}:{{{topic}}}:ts"

    def idem(self, topic: str, key: str) -> str:
        """A producer idempotency key (scoped per topic)."""
        return f"{self.ns}:{{{topic}}}:idem:{key_part(key)}"

    def ids(self, topic: str) -> str:
        """Hash of the topic: event id → ``<topic> <stream id>``, so ``load(id)`` finds an
        event (one hash per topic: it is written in the publish script, in the topic's slot;
        ``load`` asks every topic's)."""
        return f"{self.ns}:{{{topic}}}:ids"

    def legacy_ids(self) -> str:
        """The one id hash of every topic that the earlier layout kept (``chi-redis
        migrate`` moves it into :meth:`ids`)."""
        return f"{self.ns}:ids"

    def topics(self) -> str:
        """Set of every topic ever published to (written by the publisher before a topic's
        first event, outside the publish script: it is in no topic's slot)."""
        return f"{self.ns}:topics"

    def topic_from_stream(self, key: str) -> str:
        """The topic of a stream key built by :meth:`stream`."""
        return key[len(self.ns) + 2 : -len("}:stream")]

    def partitions(self) -> str:
        """Hash: partitioned topic → its declaration (JSON: ``partitions``, ``key``)."""
        return f"{self.ns}:partitions"

    # subscriptions ----------------------------------------------------------------------
    def subs(self) -> str:
        """Hash: subscription name → its registration (msgspec JSON, last-seen time)."""
        return f"{self.ns}:subs"

    def queue(self, sub: str) -> str:
        """The subscription's private stream: retries due, redrives, replays, plain tasks."""
        return f"{self.ns}:q:{{{sub}}}"

    def delayed(self, sub: str) -> str:
        """Sorted set of delayed messages, score = due time (server clock, ms)."""
        return f"{self.ns}:q:{{{sub}}}:delayed"

    def dlq(self, sub: str) -> str:
        """The subscription's dead-letter stream."""
        return f"{self.ns}:q:{{{sub}}}:dlq"

    def seen(self, sub: str, event_id: str) -> str:
        """Dedupe marker: this event id already succeeded for this subscription."""
        return f"{self.ns}:q:{{{sub}}}:seen:{key_part(event_id)}"

    def starts(self, sub: str, stream: str, entry_id: bytes | str) -> str:
        """How often the handler started on an entry delivered again after a crash (TTL)."""
        sid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return f"{self.ns}:q:{{{sub}}}:starts:{key_part(stream)}:{key_part(sid)}"

    def members(self, sub: str) -> str:
        """Sorted set of the subscription's live consumers of partitioned topics: member =
        consumer name, score = when its heartbeat runs out (server clock, ms)."""
        return f"{self.ns}:q:{{{sub}}}:members"

    def owner(self, sub: str, part: str) -> str:
        """The lease on partition ``part`` (``orders/3``) of the subscription: its owner's
        consumer name, with a TTL its owner renews."""
        return f"{self.ns}:q:{{{sub}}}:owner:{key_part(part)}"

    def checkpoint(self, name: str) -> str:
        """A replay checkpoint (its spec and state; on a single node its progress too)."""
        return f"{self.ns}:replay:{name}"

    def checkpoint_shard(self, name: str, tag: str) -> str:
        """The progress of checkpoint ``name`` written beside deliveries into the slot of
        ``tag`` (a subscription or a topic), on a cluster (docs/design.md §3.4)."""
        return f"{self.ns}:replay:{name}:{{{key_part(tag)}}}"  # names pass unchanged
