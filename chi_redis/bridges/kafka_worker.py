"""The consumers of the Kafka bus: one consumer group per subscription, ``threads`` consumers
(one per thread) in each group.

Kafka gives each partition to one consumer of a group, and a consumer handles its records
one at a time, so the records of one partition (of one key) are handled in order.  Threads
beyond a subscription's partition count stay idle.

For each record: a record whose type, topic or filter the subscription does not accept is
committed unseen; a record that does not decode (headers missing, payload corrupt) goes to
the dead-letter topic at once; else the handler runs, and on an exception runs again after a
backoff (``min_backoff_ms`` doubling up to ``max_backoff_ms``) in the same thread, so the
partition waits: Kafka has no per-message delay.  After ``max_retries`` retries (or at once
for an exception in ``throws``) the record goes to the dead-letter topic with the reason and
the exception in headers.  The offset is committed only after that (at-least-once): a worker
that dies mid-handler leaves the record to the consumer that gets the partition next.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import ChiError, DecodeError
from ..events.filters import EntryView
from ..runtime.subscriptions import Delivery
from .kafka import _client, dead_letter_topic, kafka_topic
from .kafka_deadletters import FOR_HEADER

if TYPE_CHECKING:
    from ..events.event import Event
    from ..runtime.subscriptions import Subscription
    from .kafka import KafkaEventBus

__all__ = ["KafkaWorker", "backoff_ms"]

logger = logging.getLogger(__name__)
_FIELDS = {"chi-id": b"id", "chi-type": b"type", "chi-ts": b"ts", "chi-ver": b"ver",
           "chi-enc": b"enc", "chi-meta": b"meta"}
#: How long one poll waits; also how soon a stop request is seen between records.
POLL_S = 0.2
ERROR_CHARS = 1000
#: How long a consumer waits before reading again a record it could not settle.
RETRY_S = 1.0


def backoff_ms(sub: Subscription, attempt: int) -> int:
    """The wait after failed attempt ``attempt`` (1-based)."""
    o = sub.options
    return int(min(o.max_backoff_ms, o.min_backoff_ms * 2 ** min(attempt - 1, 40)))


def _poll_interval_ms(sub: Subscription) -> int:
    # The consumer does not poll while it backs off: the group must not evict it meanwhile.
    total = sum(backoff_ms(sub, a) for a in range(1, sub.options.max_retries + 1))
    return min(86_400_000, max(300_000, total + 300_000))


class KafkaWorker:
    """Runs every subscription of a :class:`KafkaEventBus` on consumer threads."""

    def __init__(self, bus: KafkaEventBus, *, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.bus = bus
        self.threads = threads
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Create the topics (events and dead letters) and start the consumer threads."""
        bus = self.bus
        for sub in bus.subscriptions.values():
            if not sub.wildcard:
                bus.ensure_topics([kafka_topic(bus.namespace, t) for t in sub.bound_topics()])
            bus.ensure_topics([dead_letter_topic(bus.namespace, sub.name)])
            for n in range(self.threads):
                t = threading.Thread(target=_Consumer(self, sub).run, daemon=True,
                                     name=f"chi-kafka-{sub.name}-{n}")
                t.start()
                self._threads.append(t)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Let handlers in flight finish (up to ``timeout_s``); uncommitted records stay."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()


class _Consumer:
    """One consumer of one subscription's group, on its own thread."""

    def __init__(self, worker: KafkaWorker, sub: Subscription) -> None:
        self.worker = worker
        self.bus = worker.bus
        self.sub = sub
        self.dlq_topic = dead_letter_topic(self.bus.namespace, sub.name)
        self.prefix = f"{self.bus.namespace}."

    def config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bus.bootstrap, "group.id": self.bus.group_id(self.sub.name),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if self.sub.start == "earliest" else "latest",
            "max.poll.interval.ms": _poll_interval_ms(self.sub),
            "topic.metadata.refresh.interval.ms": 5_000,
            "session.timeout.ms": self.bus.session_timeout_ms,
            "heartbeat.interval.ms": max(100, self.bus.session_timeout_ms // 5),
            **self.bus.client_options,
        }

    def subscription_topics(self) -> list[str]:
        if self.sub.wildcard:  # every chi topic of the namespace (not the dead letters)
            return [rf"^{self.prefix.replace('.', '[.]')}[a-z0-9][a-z0-9._-]*$"]
        return [kafka_topic(self.bus.namespace, t) for t in self.sub.bound_topics()]

    def run(self) -> None:
        consumer = _client().Consumer(self.config())
        try:
            consumer.subscribe(self.subscription_topics())
            while not self.worker.stopping:
                msg = consumer.poll(POLL_S)
                if msg is None:
                    continue
                if msg.error():
                    logger.warning("kafka consumer %s: %s", self.sub.name, msg.error().str())
                    continue
                self._one(consumer, msg)
        except Exception:
            logger.exception("kafka consumer of %s stopped", self.sub.name)
        finally:
            consumer.close()

    def _one(self, consumer: Any, msg: Any) -> None:
        try:
            handled = self.handle(msg)
        except ChiError as exc:  # e.g. the dead letter could not be written: try again later
            logger.warning("kafka consumer %s: %s; the record is read again in %s s",
                           self.sub.name, exc, RETRY_S)
            ck = _client()
            consumer.seek(ck.TopicPartition(msg.topic(), msg.partition(), msg.offset()))
            self.worker._stop.wait(RETRY_S)
            return
        if handled:
            self._commit(consumer, msg)

    def _commit(self, consumer: Any, msg: Any) -> None:
        try:
            consumer.commit(message=msg, asynchronous=False)
        except _client().KafkaException as exc:  # e.g. the partition moved meanwhile
            logger.warning("kafka commit of %s failed (the record will be delivered again):"
                           " %s", self.sub.name, exc.args[0].str())

    # one record ---------------------------------------------------------------------------
    def handle(self, msg: Any) -> bool:
        """Handle one record; False when the worker stopped first (not to be committed)."""
        headers = {k: v for k, v in (msg.headers() or []) if v is not None}
        only = headers.get(FOR_HEADER)
        if only is not None and only != self.sub.name.encode():
            return True  # redriven for another subscription: committed unseen
        topic = msg.topic()[len(self.prefix):]
        type_ = headers.get("chi-type", b"").decode("utf-8", "replace")
        if type_ and not self.sub.accepts(EntryView(type_, topic, headers.get("chi-meta", b"{}"))):
            return True  # not for this subscription: committed unseen
        try:
            event = self.decode(msg, headers, topic)
        except DecodeError as exc:
            self.dead_letter(msg, "decode", exc, 0)
            return True
        return self.run_handler(msg, event)

    def decode(self, msg: Any, headers: dict[str, bytes], topic: str) -> Event:
        fields = {name: headers[h] for h, name in _FIELDS.items() if h in headers}
        fields[b"data"] = msg.value() or b""
        where = f"{msg.partition()}:{msg.offset()}"
        return self.bus.codec.decode(fields, topic=topic, stream=msg.topic(), entry_id=where)

    def run_handler(self, msg: Any, event: Event) -> bool:
        sub, attempt = self.sub, 1
        while True:
            delivery = Delivery(subscription=sub.name, attempt=attempt, stream=msg.topic(),
                                entry_id=f"{msg.partition()}:{msg.offset()}")
            try:
                result = sub.call(event, delivery)
                if inspect.iscoroutine(result):
                    asyncio.run(result)
                return True
            except Exception as exc:
                if isinstance(exc, sub.options.throws):
                    self.dead_letter(msg, "not_retryable", exc, attempt)
                    return True
                if attempt > sub.options.max_retries:
                    self.dead_letter(msg, "retries_exhausted", exc, attempt)
                    return True
                logger.warning("handler %s failed (attempt %d): %s", sub.name, attempt,
                               type(exc).__name__)
                if self.worker._stop.wait(backoff_ms(sub, attempt) / 1000):
                    return False
                attempt += 1

    def dead_letter(self, msg: Any, reason: str, exc: BaseException, attempts: int) -> None:
        """Copy the record to the dead-letter topic with why it failed; waits for the ack."""
        extra = [("chi-dlq-reason", reason.encode()),
                 ("chi-dlq-exception", type(exc).__name__.encode()),
                 ("chi-dlq-error", str(exc)[:ERROR_CHARS].encode("utf-8", "replace")),
                 ("chi-dlq-attempts", str(attempts).encode()),
                 ("chi-dlq-subscription", self.sub.name.encode()),
                 ("chi-dlq-source", f"{msg.topic()}:{msg.partition()}:{msg.offset()}".encode()),
                 ("chi-dlq-at-ms", str(int(time.time() * 1000)).encode())]
        producer = self.bus.producer()
        results: list[Any] = [None]
        self.bus._produce(producer, self.dlq_topic, msg.key() or b"", msg.value() or b"",
                          [*(msg.headers() or []), *extra], results, 0)
        producer.flush(self.bus.timeout_s + 5)
        self.bus._outcome(results)  # raises when the dead letter was not written
        logger.warning("dead-lettered a record of %s (%s)", self.sub.name, reason)
