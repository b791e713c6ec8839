"""The Kafka bus (``bus.type: kafka``): chi events over Apache Kafka or any Kafka-compatible
broker (Redpanda, tansu, a managed service), with confluent-kafka (the extra ``kafka``).

Where the events go (docs/buses.md, "Kafka"):

- chi topic ``T`` of namespace ``NS`` is the Kafka topic ``NS.T`` (both are chi names,
  ``[a-z0-9][a-z0-9._-]*``, so the result is a legal Kafka topic name; at most 249
  characters); the dead letters of subscription ``S`` go to ``NS._dlq.S`` (a chi name never
  starts with ``_``, so no chi topic maps there);
- the record's value is the event's data, encoded by the bus's :class:`Codec` (msgpack or
  JSON, the same size cap); its headers carry the envelope: ``chi-id``, ``chi-type``,
  ``chi-ts`` (µs since the epoch), ``chi-ver``, ``chi-enc`` and ``chi-meta`` (the metadata as
  a JSON object);
- the record's key is the partition key: the metadata value ``partition_key`` when the event
  has one, else the event id.  Events with the same key land in the same partition, and a
  partition is consumed in order.

Publishing waits for the broker's acknowledgement from every in-sync replica (``acks=all``)
through an idempotent producer (``enable.idempotence``: the producer's own retries write no
duplicates).  Kafka has no per-message delay and no deduplication by an application key:
both are refused with :class:`KafkaUnsupportedError`.  Subscriptions run on
:class:`~chi_redis.bridges.kafka_worker.KafkaWorker`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ChiError, PublishError, ValidationError
from ..events.codec import DEFAULT_MAX_EVENT_BYTES, Codec, Encoding
from ..events.event import Event
from ..events.names import validate_name
from ..runtime.subscriptions import Subscription, SubscriptionOptions
from . import NotSupportedError

if TYPE_CHECKING:
    from ..config.schema import Config
    from ..events.filters import Filter
    from ..runtime.subscriptions import Handler, Start
    from .kafka_worker import KafkaWorker

__all__ = [
    "PARTITION_KEY",
    "KafkaError",
    "KafkaEventBus",
    "KafkaUnsupportedError",
    "dead_letter_topic",
    "kafka_topic",
]

#: The metadata key whose value, when present, is the record key (the partition key).
PARTITION_KEY = "partition_key"
#: Kafka's limit on a topic name's length.
MAX_TOPIC_CHARS = 249
#: How long a publish waits for the broker's acknowledgement (and topic creation, and
#: metadata requests), unless the bus is given another ``timeout_s``.
DEFAULT_TIMEOUT_S = 30.0


#: EventBus.subscribe options the Kafka bus refuses when given (a value other than None/False).
_UNSUPPORTED = frozenset({"max_deliveries", "time_limit_ms", "dedupe", "dedupe_ttl_ms",
                          "batch_size", "batch_wait_ms"})


class KafkaError(ChiError):
    """The Kafka broker refused or failed an operation (or could not be reached)."""


class KafkaUnsupportedError(NotSupportedError):
    """Something the Kafka bus cannot do (a per-message delay, a batch subscription, ...);
    a :class:`~chi_redis.bridges.NotSupportedError`, as the RabbitMQ bus raises."""


def _client() -> Any:
    try:
        import confluent_kafka
        import confluent_kafka.admin
    except ImportError:
        raise ChiError("the Kafka bus needs confluent-kafka: pip install 'chi-redis[kafka]'"
                       ) from None
    return confluent_kafka


@contextlib.contextmanager
def mapped_errors(bootstrap: str) -> Iterator[None]:
    """confluent-kafka's KafkaException (a metadata request timed out, ...) as KafkaError."""
    ck = _client()
    try:
        yield
    except ck.KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        text = err.str() if hasattr(err, "str") else str(err)
        raise KafkaError(f"Kafka at {bootstrap}: {text}") from None


def _checked_topic(name: str) -> str:
    if len(name) > MAX_TOPIC_CHARS:
        raise ValidationError(f"Kafka topic {name[:40]!r}... is longer than {MAX_TOPIC_CHARS}"
                              " characters: use a shorter namespace or topic", field="topic")
    return name


def kafka_topic(namespace: str, topic: str) -> str:
    """The Kafka topic of chi topic ``topic`` in ``namespace``: ``namespace.topic``."""
    return _checked_topic(f"{namespace}.{topic}")


def dead_letter_topic(namespace: str, subscription: str) -> str:
    """The Kafka topic holding the dead letters of ``subscription``: ``namespace._dlq.sub``."""
    return _checked_topic(f"{namespace}._dlq.{subscription}")


def envelope_headers(event: Event, codec: Codec) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of the record carrying ``event`` (checked, size-capped)."""
    id_, type_, ts, version, meta, data = codec.encode_parts(event)
    key = event.metadata.get(PARTITION_KEY, id_)
    headers = [("chi-id", id_.encode()), ("chi-type", type_.encode()),
               ("chi-ts", str(ts).encode()), ("chi-ver", version.encode()),
               ("chi-enc", codec.enc_tag), ("chi-meta", meta)]
    return str(key).encode(), data, headers


class KafkaEventBus:
    """Publishes chi events to Kafka and runs subscriptions on consumer groups.

    Thread-safe: confluent-kafka's producer is.  ``brokers``: bootstrap servers
    (``host:port``); ``group_prefix``: the consumer group of subscription ``S`` is
    ``group_prefix.namespace.S``; topics this bus creates get ``partitions`` partitions and
    ``replication_factor`` replicas; a consumer that dies is noticed after
    ``session_timeout_ms`` (joining a group takes about half of it on some brokers);
    ``timeout_s``: how long a publish waits for its acknowledgement (a record not
    acknowledged by then fails in the producer too: ``delivery.timeout.ms``);
    ``client_options``: further librdkafka settings of every client.
    """

    def __init__(
        self,
        brokers: Sequence[str],
        *,
        namespace: str = "chi",
        group_prefix: str = "chi-events",
        encoding: Encoding = "msgpack",
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        partitions: int = 3,
        replication_factor: int = 1,
        session_timeout_ms: int = 45_000,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        if not brokers:
            raise ValidationError("the Kafka bus needs at least one broker (host:port)",
                                  field="brokers")
        self._ns = validate_name(namespace, "namespace")
        self.bootstrap = ",".join(brokers)
        self.group_prefix = group_prefix
        self.codec = Codec(encoding, max_event_bytes)
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.session_timeout_ms = session_timeout_ms
        self.timeout_s = timeout_s
        self.client_options = dict(client_options or {})
        self.subscriptions: dict[str, Subscription] = {}
        self._producer: Any = None
        self._admin: Any = None
        self._known: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config, *, namespace: str | None = None) -> KafkaEventBus:
        """The bus ``config.bus`` describes (``bus.kafka``; ``namespace`` wins if given)."""
        k = config.bus.kafka
        return cls(
            k.brokers, namespace=namespace or config.namespace, group_prefix=k.consumer_group,
            encoding=config.bus.encoding, max_event_bytes=config.bus.max_event_bytes,
            partitions=k.partitions, replication_factor=k.replication_factor,
            session_timeout_ms=k.session_timeout_ms,
        )

    def __repr__(self) -> str:
        return f"KafkaEventBus({self.bootstrap!r}, namespace={self._ns!r})"

    @property
    def namespace(self) -> str:
        return self._ns

    def group_id(self, subscription: str) -> str:
        """The consumer group of ``subscription``."""
        return f"{self.group_prefix}.{self._ns}.{subscription}"

    # clients ----------------------------------------------------------------------------
    def producer_config(self) -> dict[str, Any]:
        """The producer's settings: every write acknowledged by all in-sync replicas, and
        idempotent (the producer's retries write no duplicates, in order)."""
        return {
            "bootstrap.servers": self.bootstrap, "acks": "all", "enable.idempotence": True,
            "linger.ms": 1, "delivery.timeout.ms": int(self.timeout_s * 1000),
            "message.max.bytes": max(self.codec.max_event_bytes + 65536,
                                                     1_000_000),
            **self.client_options,
        }

    def producer(self) -> Any:
        with self._lock:
            if self._producer is None:
                self._producer = _client().Producer(self.producer_config())
            return self._producer

    def admin(self) -> Any:
        with self._lock:
            if self._admin is None:
                self._admin = _client().admin.AdminClient(
                    {"bootstrap.servers": self.bootstrap, **self.client_options})
            return self._admin

    def ensure_topics(self, names: Sequence[str]) -> None:
        """Create the Kafka topics ``names`` that do not exist yet (once per bus)."""
        missing = [n for n in dict.fromkeys(names) if n not in self._known]
        if not missing:
            return
        ck = _client()
        new = [ck.admin.NewTopic(n, num_partitions=self.partitions,
                                 replication_factor=self.replication_factor) for n in missing]
        futures = self.admin().create_topics(new, request_timeout=self.timeout_s,
                                             operation_timeout=self.timeout_s)
        for name, fut in futures.items():
            try:
                fut.result(timeout=self.timeout_s + 5)
            except TimeoutError:
                raise KafkaError(f"cannot create Kafka topic {name!r}: no answer from"
                                 f" {self.bootstrap} within {self.timeout_s:g} s") from None
            except ck.KafkaException as exc:
                if exc.args[0].code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaError(f"cannot create Kafka topic {name!r} on {self.bootstrap}:"
                                     f" {exc.args[0].str()}") from None
            self._known.add(name)

    def close(self) -> None:
        """Deliver what is still queued (up to 30 s) and drop the clients."""
        with self._lock:
            producer, self._producer, self._admin = self._producer, None, None
        if producer is not None:
            producer.flush(self.timeout_s)

    # publishing -------------------------------------------------------------------------
    def publish(self, event: Event, *, idempotency_key: str | None = None,
                delay_ms: int | None = None) -> str:
        """Publish ``event``; returns ``partition:offset`` once all in-sync replicas have it.

        Kafka cannot delay one message (``delay_ms``) nor drop a second publish with the
        same ``idempotency_key``: both raise :class:`KafkaUnsupportedError`.
        """
        if idempotency_key is not None:
            raise KafkaUnsupportedError(
                "the Kafka bus cannot deduplicate publishes by idempotency key (the idempotent"
                " producer only drops duplicates of its own retries): deduplicate in the handler")
        return self.publish_batch([event], delay_ms=delay_ms)[0]

    def publish_batch(self, events: Sequence[Event], *, delay_ms: int | None = None
                      ) -> list[str]:
        """Publish ``events`` in order (all validated first); waits for every acknowledgement.

        A partial failure raises :class:`PublishError` (``written``/``failed`` by index).
        """
        if delay_ms:
            raise KafkaUnsupportedError(
                "Kafka has no per-message delay: delayed publishing is not available on the"
                " Kafka bus (use bus.type: redis, or delay in the consumer)")
        records = [(kafka_topic(self._ns, e.topic), *envelope_headers(e, self.codec))
                   for e in events]
        self.ensure_topics([r[0] for r in records])
        results: list[Any] = [None] * len(records)
        producer = self.producer()
        for i, (topic, key, value, headers) in enumerate(records):
            self._produce(producer, topic, key, value, headers, results, i)
        producer.flush(self.timeout_s + 5)
        return self._outcome(results)

    def _produce(self, producer: Any, topic: str, key: bytes, value: bytes,
                 headers: list[tuple[str, bytes]], results: list[Any], i: int) -> None:
        def done(err: Any, msg: Any) -> None:
            results[i] = err if err is not None else f"{msg.partition()}:{msg.offset()}"

        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=done)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)

    @staticmethod
    def _outcome(results: list[Any]) -> list[str]:
        written = {i: r for i, r in enumerate(results) if isinstance(r, str)}
        if len(written) == len(results):
            return [str(r) for r in results]
        failed = [i for i in range(len(results)) if i not in written]
        first = results[failed[0]]
        why = first.str() if first is not None else "no acknowledgement in time"
        err = KafkaError(f"Kafka publish failed: {why}")
        if len(results) == 1:
            raise err
        raise PublishError(f"{len(failed)} of {len(results)} events not written: {why}",
                           written=written, failed=failed, cause=err)

    # subscriptions ----------------------------------------------------------------------
    def subscribe(
        self,
        name: str,
        *,
        types: list[str] | tuple[str, ...] = (),
        topics: list[str] | tuple[str, ...] = (),
        filter: Filter | None = None,
        priority: int = 0,
        max_retries: int = 5,
        min_backoff_ms: int = 1_000,
        max_backoff_ms: int = 300_000,
        start: Start = "new",
        throws: tuple[type[BaseException], ...] = (),
        **rest: Any,
    ) -> Callable[[Handler], Handler]:
        """Register ``fn(event)`` (or ``fn(event, delivery)``) as subscription ``name``.

        As :meth:`EventBus.subscribe`.  A ``priority`` (each subscription has its own
        consumers: nothing to order), batches, dedupe, time limits, delivery caps and a
        datetime ``start`` are not available: :class:`KafkaUnsupportedError`.
        """
        unknown = sorted(set(rest) - _UNSUPPORTED)
        if unknown:
            raise TypeError(f"subscribe() got an unexpected keyword argument {unknown[0]!r}")
        given = sorted(k for k, v in rest.items() if v not in (None, False))
        if priority:  # nothing to order: each subscription has its own consumers
            given.insert(0, "priority")
        if given or not isinstance(start, str):
            what = ", ".join(given) or "start=<datetime>"
            raise KafkaUnsupportedError(f"the Kafka bus does not support {what}"
                                        " (docs/buses.md, Kafka)")
        options = SubscriptionOptions(max_retries=max_retries, min_backoff_ms=min_backoff_ms,
                                      max_backoff_ms=max_backoff_ms, throws=tuple(throws))
        options.validate()

        def register(fn: Handler) -> Handler:
            if name in self.subscriptions:
                raise ValueError(f"subscription {name!r} is already registered")
            self.subscriptions[name] = Subscription(
                name=name, handler=fn, types=tuple(types), topics=tuple(topics),
                filter=filter, priority=priority, start=start, options=options)
            return fn

        return register

    def declare(self) -> None:
        """Create every registered subscription's topics (events and dead letters) and pin
        where each new ``start="new"`` group begins: at the current end of its topics
        (``pin_start``).  Workers do this at start; events published after it returns reach
        the subscriptions, whenever their consumers join."""
        from .kafka_worker import pin_start

        for sub in self.subscriptions.values():
            if not sub.wildcard:
                self.ensure_topics([kafka_topic(self._ns, t) for t in sub.bound_topics()])
            self.ensure_topics([dead_letter_topic(self._ns, sub.name)])
            if sub.start == "new":
                with mapped_errors(self.bootstrap):
                    pin_start(self, sub)

    def worker(self, *, threads: int = 1) -> KafkaWorker:
        """The consumers of every registered subscription: ``threads`` per subscription."""
        from .kafka_worker import KafkaWorker

        return KafkaWorker(self, threads=threads)

    def dead_letters(self, sub: str, *, count: int = 100, timeout_s: float = 30.0
                     ) -> list[dict[str, Any]]:
        """The first ``count`` dead letters of ``sub`` not yet redriven or purged (oldest
        first), read without a group (:mod:`.kafka_deadletters`)."""
        from .kafka_deadletters import list_dead_letters

        return list_dead_letters(self, sub, count=count, timeout_s=timeout_s)


if TYPE_CHECKING:  # mypy checks that the Kafka bus and its worker implement the protocols
    from . import Bus, BusWorker

    def _is_bus(bus: KafkaEventBus) -> Bus:
        return bus

    def _is_worker(worker: KafkaWorker) -> BusWorker:
        return worker
