"""The Kafka backend of the runtime conformance suite: one tansu broker for the test process
(:func:`shared_tansu`, started on first use, stopped by its PID at exit), each test in its own
namespace (so its own Kafka topics and consumer groups).

Workers run in this process as :class:`~chi_redis.bridges.kafka_worker.KafkaWorker`; worker
processes are ``chi-redis worker MODULE`` on a ``bus.type: kafka`` configuration.
"""

from __future__ import annotations

import atexit
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chi_redis.bridges.kafka import KafkaEventBus, kafka_topic
from chi_redis.bridges.kafka_worker import KafkaWorker, subscription_topics
from chi_redis.runtime.deadletters import DeadLetter

from .backends import DEADLINE_S, Backend, BridgeSession, Features, Session
from .kafka import TansuBroker
from .processes import WorkerProcess
from .skips import skip_or_fail
from .waiting import wait_until

#: The consumer session timeout: a group join takes about half of it on tansu, and a killed
#: worker's partitions move after it.
SESSION_MS = 2000
_SHARED: list[TansuBroker] = []


def shared_tansu() -> TansuBroker:
    """The one tansu broker of this test process, started on first use."""
    if not _SHARED:
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            skip_or_fail("confluent-kafka is not installed (pip install 'chi-redis[kafka]')")
        broker = TansuBroker(Path(tempfile.mkdtemp(prefix="chi-tansu-")))
        atexit.register(broker.stop)
        _SHARED.append(broker.start())
    return _SHARED[0]


def as_dead_letter(bus: KafkaEventBus, sub: str, record: dict[str, Any]) -> DeadLetter:
    """A record of the dead-letter topic (``KafkaEventBus.dead_letters`` gives dicts) as the
    :class:`DeadLetter` the other buses give.  The Kafka bus counts handler attempts only
    (retries run in the consumer, from one read of the record): they are its deliveries."""
    stream, partition, offset = (record["source"] or "::").rsplit(":", 2)
    attempts, at_ms = int(record["attempts"]), int(record["at_ms"])
    return DeadLetter(
        id=record["id"], subscription=sub, reason=record["reason"] or "",
        error_type=record["exception"] or "", error=record["error"] or "", traceback="",
        event_id=record["event_id"] or "", type=record["type"] or "",
        topic=stream.removeprefix(f"{bus.namespace}."), source_stream=stream,
        source_id=f"{partition}:{offset}", deliveries=attempts, attempts=attempts,
        first_failure_ms=at_ms, last_failure_ms=at_ms, kind="event")


class KafkaSession(BridgeSession):
    """A session on a :class:`KafkaEventBus` of the shared broker."""

    bus: KafkaEventBus

    def __init__(self, bus: KafkaEventBus) -> None:
        super().__init__(bus, url=bus.bootstrap)
        self.workers: list[KafkaWorker] = []

    def _consumer(self, sub: str, **extra: Any) -> Any:
        import confluent_kafka as ck

        return ck.Consumer({"bootstrap.servers": self.bus.bootstrap, "enable.auto.commit": False,
                            "group.id": self.bus.group_id(sub), **extra})

    def prepare(self, **options: Any) -> None:
        """Create the topics and pin where new groups begin (what a worker does first)."""
        self.bus.declare()

    def run(self, threads: int = 4) -> None:
        """``threads`` consumers per subscription, at most one per partition (more idle)."""
        worker = self.bus.worker(threads=min(threads, self.bus.partitions))
        self.workers.append(worker)
        worker.start()

    def join(self, sub: str) -> None:
        """Every partition of the subscription's topics committed up to its end."""
        import confluent_kafka as ck

        subscription = self.bus.subscriptions[sub]
        consumer = self._consumer(sub)

        def committed_to_the_end() -> bool:
            listed = consumer.list_topics(timeout=30).topics
            parts = [ck.TopicPartition(t, p)
                     for t in subscription_topics(self.bus, subscription, listed)
                     if t in listed for p in sorted(listed[t].partitions)]
            for tp in consumer.committed(parts, timeout=30):
                low, high = consumer.get_watermark_offsets(tp, timeout=30)
                if (tp.offset if tp.offset >= 0 else low) < high:
                    return False
            return True

        try:
            wait_until(committed_to_the_end, DEADLINE_S, f"{sub} committed to the end",
                       interval=0.2)
        finally:
            consumer.close()

    def dead_letters(self, sub: str) -> list[DeadLetter]:
        return [as_dead_letter(self.bus, sub, r) for r in self.bus.dead_letters(sub)]

    def redrive(self, sub: str) -> int:
        from chi_redis.bridges.kafka_deadletters import redrive

        return redrive(self.bus, sub, None)

    def strand(self, sub: str, topic: str, count: int) -> int:
        """A consumer of the group reads ``count`` records and leaves without committing."""
        consumer = self._consumer(sub, **{"session.timeout.ms": SESSION_MS,
                                          "heartbeat.interval.ms": SESSION_MS // 5})
        got: list[Any] = []

        def read() -> bool:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                got.append(msg)
            return len(got) >= count

        try:
            consumer.subscribe([kafka_topic(self.bus.namespace, topic)])
            wait_until(read, DEADLINE_S, f"{count} records read by the stranded consumer",
                       interval=0)
        finally:
            consumer.close()
        return len(got)

    def inject_malformed(self, topic: str, type_: str, event_id: str) -> str:
        name = kafka_topic(self.bus.namespace, topic)
        self.bus.ensure_topics([name])
        where: list[str] = []
        producer = self.bus.producer()
        producer.produce(name, key=event_id.encode(), value=b"\xc1", headers=[
            ("chi-id", event_id.encode()), ("chi-type", type_.encode()), ("chi-ts", b"1"),
            ("chi-ver", b"1.0"), ("chi-enc", b"mp"), ("chi-meta", b"{}")],
            on_delivery=lambda err, msg: where.append(f"{msg.partition()}:{msg.offset()}"))
        producer.flush(30)
        assert where, "the malformed record was not acknowledged"
        return where[0]

    def bus_config(self) -> dict[str, Any]:
        return {"type": "kafka", "kafka": {"brokers": [self.bus.bootstrap],
                                           "session_timeout_ms": SESSION_MS}}

    def wait_ready(self, proc: WorkerProcess, subs: dict[str, list[str]]) -> None:
        wait_until(lambda: "kafka worker ready" in proc.output(), DEADLINE_S,
                   "the Kafka worker process ready", interval=0.1)


@contextlib.contextmanager
def _kafka(ns: str, tmp_path: Path) -> Iterator[Session]:
    bus = KafkaEventBus([shared_tansu().address], namespace=ns, session_timeout_ms=SESSION_MS)
    try:
        yield KafkaSession(bus)
    finally:
        bus.close()


KAFKA = Backend(
    "kafka",
    _kafka,
    Features(
        guaranteed_order=False, key_order=True, replay=False, batch=False,
        idempotent_publish=False, time_limit=False,
        redrive_same_entry=False, refuses=frozenset({
            "delay_ms", "time_limit_ms", "batch_size", "dedupe", "idempotency_key",
            "max_deliveries", "priority"}),
        reasons={
            "redrive_same_entry": "redrive appends the dead letter's record to its source"
                                  " topic again (for that subscription only): a new offset",
            "kill_and_restart": "the session's tansu broker keeps everything in memory and"
                                " is shared by the session's tests",
            "persistence": "the test broker (tansu) runs in memory",
            "guaranteed_order": "a topic's events spread over its partitions (key = the event"
                                " id unless metadata partition_key): order holds per key"
                                " (key_order), not across keys",
            "replay": "replay reads the event store (Redis or the archive); the Kafka bus only"
                      " delivers",
            "batch": "batch subscriptions are refused by the Kafka bus",
            "idempotent_publish": "refused: the idempotent producer drops only its own"
                                  " retries' duplicates, not a second publish of a key",
            "time_limit": "time_limit_ms is refused: the Kafka worker has no time-limit"
                          " watchdog (Dramatiq's TimeLimit runs on the Redis worker only)",
        },
    ),
    marks=(pytest.mark.kafka,),
)
