"""Settling a batch message that did not simply succeed (docs/design.md §5.10).

What is left of a batch once Dramatiq is done with it goes out in one script call
(``batch_settle.lua``), at most once (on a cluster, for topic entries, in steps: at least
once, :meth:`BatchSettler._split`): the dead letters of its poison members (each the
usual event dead letter, with the member's own source stream and entry id), the parts its
failing members were split into (new batch messages on the private stream, one attempt
each), then the acks of every entry the message held.  When Redis refuses the writes the
entries stay pending and are reclaimed after their lease, as for single dead letters (5.4).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import dramatiq
import redis.exceptions as rex

from ..backend.cluster import is_cluster, same_slot
from ..backend.scripts import script
from ..errors import BatchFailed
from ..observe.metrics import counter
from .batches import BatchMessage, attempts_before
from .deadletters import (
    RefusedWrites,
    dead_letter_fields,
    dead_letter_reason,
    encode_body,
    log_dead_letter,
)
from .encoder import encode_message

if TYPE_CHECKING:
    from .broker import StreamsBroker

__all__ = ["BatchSettler", "halves"]

logger = logging.getLogger(__name__)

CONNECTION_ERRORS = (rex.ConnectionError, rex.TimeoutError)
_HANDLED = "chi_events_handled_total"


def halves(indexes: list[int]) -> list[list[int]]:
    """``indexes`` split in two (the first half the smaller one for an odd count)."""
    mid = len(indexes) // 2
    return [indexes[:mid], indexes[mid:]]


def attempts(message: BatchMessage, reason: str) -> int:
    """How often the message's events ran, this run included (Retries already counted a
    run it gave up after; it did not count one that raised an exception in ``throws``)."""
    retries = message.options.get("retries", 0)
    ran = retries if isinstance(retries, int) and retries > 0 else 0
    return attempts_before(message.options) + ran + (reason != "retries_exhausted")


class BatchSettler:
    """Writes what a batch message leaves behind, for one queue.  Thread-safe."""

    def __init__(self, broker: StreamsBroker, queue: str) -> None:
        self.broker = broker
        self.client = broker.client
        self.queue = queue
        self.private = broker.keys.queue(queue)
        self.dlq = broker.keys.dlq(queue)
        self.maxlen = broker.options.dlq_maxlen
        self._script = script("batch_settle")
        self._refused = RefusedWrites("Redis refused to settle %d failed batch(es) of %s")

    def settle(
        self, m: BatchMessage, *, poison: list[int], parts: list[list[int]],
        exc: BaseException | None,
    ) -> Any:
        """Dead-letter the undecodable members and those in ``poison``, write ``parts`` as
        new batch messages, ack every entry of ``m``; the script's reply (the dead letters'
        ids, 0 when nothing was pending).  Connection errors propagate (the caller retries;
        the script runs at most once)."""
        reason = dead_letter_reason(self.broker, m, exc) if poison else ""
        letters = [self.letter(m, i, getattr(e, "kind", "decode"), e) for i, e in m.dead]
        letters += [self.letter(m, i, reason, exc) for i in poison]
        bodies = [self.part(m, p, exc) for p in parts if p]
        keys, argv = self._call(m, letters, bodies)
        try:
            if is_cluster(self.client) and not same_slot(*keys):
                written = self._split(m, argv)
            else:
                written = self._script.run(self.client, keys, argv)
        except CONNECTION_ERRORS:
            raise
        except rex.RedisError as e:  # OOM, READONLY, NOPERM: left to the lease
            self._refused.note(self.queue, e)
            written = 0
        finally:
            for stream, sid, _ in m.entries:
                self.broker.release(self.queue, stream, sid)
        if isinstance(written, list):
            self._count(m, letters, written, split=sum(len(p) for p in parts))
        return written

    def _call(
        self, m: BatchMessage, letters: list[dict[str, Any]], bodies: list[bytes]
    ) -> tuple[list[str], list[Any]]:
        by_stream = self._by_stream(m)
        keys = [self.private, self.dlq, *by_stream]
        argv: list[Any] = [self.queue, self.maxlen, len(bodies), len(letters)]
        for ids in by_stream.values():
            argv.append(len(ids))
            argv += ids
        argv += bodies
        for fields in letters:
            argv.append(2 * len(fields))
            for k, v in fields.items():
                argv += (k, v)
        return keys, argv

    def _split(self, m: BatchMessage, argv: list[Any]) -> Any:
        """``batch_settle.lua`` for entries in other slots than the subscription's (topic
        entries, on a cluster): the pending check of the first entry, the script's writes
        in the subscription's slot, then the acks, pipelined to their masters.

        Not atomic, as :func:`~chi_redis.backend.cluster.split_dead_letter`: a worker that
        dies (or loses its connection) after the writes and before the acks leaves the
        entries pending, and settling them again writes the dead letters and parts again
        (at least once, where one slot gives exactly once).
        """
        stream, sid, _ = m.entries[0]
        try:
            pending = self.client.xpending_range(stream, self.queue, sid, sid, 1)
        except rex.ResponseError:  # NOGROUP: the writes are the only copy left
            pending = None
        if pending is not None and not pending:
            return 0
        head = [self.queue, self.maxlen, argv[2], argv[3]]
        skip = 4 + sum(1 + len(ids) for ids in self._by_stream(m).values())
        written = self._script.run(self.client, [self.private, self.dlq], head + argv[skip:])
        pipe = self.client.pipeline(transaction=False)
        for name, ids in self._by_stream(m).items():
            pipe.xack(name, self.queue, *ids)
            if name == self.private:
                pipe.xdel(name, *ids)
        pipe.execute()
        return written

    @staticmethod
    def _by_stream(m: BatchMessage) -> dict[str, list[bytes]]:
        by_stream: dict[str, list[bytes]] = {}
        for stream, sid, _ in m.entries:
            by_stream.setdefault(stream, []).append(sid)
        return by_stream

    def letter(
        self, m: BatchMessage, i: int, reason: str, exc: BaseException | None
    ) -> dict[str, Any]:
        """The dead letter of member ``i``: an event dead letter with its own source."""
        topic, fields, src, src_id = m.members[i]
        if isinstance(exc, BatchFailed) and exc.cause is not None:
            exc = exc.cause  # what the handler said went wrong
        return dead_letter_fields(
            sub=self.queue, reason=reason, exc=exc, kind="event", body=encode_body(fields),
            event_id=fields.get(b"id", b""), type_=fields.get(b"type", b""), topic=topic,
            source_stream=src, source_id=src_id, deliveries=m.counts[i],
            attempts=attempts(m, reason), first_failure_ms=m.options.get("first_failure"),
        )

    def part(self, m: BatchMessage, indexes: list[int], exc: BaseException | None) -> bytes:
        """The encoded batch message of one part of ``m``: one attempt (``max_retries`` 0),
        counting the attempts its events already had."""
        members = [m.members[i] for i in indexes]
        reason = dead_letter_reason(self.broker, m, exc)
        options: dict[str, Any] = {"max_retries": 0, "batch_attempts": attempts(m, reason)}
        for name in ("replay", "first_failure"):
            if name in m.options:
                options[name] = m.options[name]
        first = members[0][1].get(b"id", b"")
        return encode_message(dramatiq.Message(
            queue_name=self.queue, actor_name=self.queue, args=(members,), kwargs={},
            options=options, message_id=f"{self.queue}:{_text(first)}+{len(members) - 1}",
            message_timestamp=int(time.time() * 1000),
        ))

    def _count(
        self, m: BatchMessage, letters: list[dict[str, Any]], written: list[Any], split: int
    ) -> None:
        if split:
            logger.info("a batch of %d events of %s failed %d time(s): split to isolate the"
                        " failing event(s)", split, self.queue, attempts(m, "retries_exhausted"))
        for fields, dl_id in zip(letters, written, strict=False):
            counter("chi_dead_lettered_total").labels(self.queue, fields["reason"]).inc()
            counter(_HANDLED).labels(self.queue, "dead_lettered").inc()
            log_dead_letter(self.queue, fields["src"], fields["src_id"], fields, dl_id)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
