"""The Kafka bus against a real Kafka-protocol broker (tansu, tests/support/kafka.py).

Subscriptions start at ``earliest``: a group's first join takes a second or more, and
events published before it would otherwise be skipped (``start="new"`` is ``latest``).

The runtime conformance suite (tests/contract/test_runtime_conformance.py) does not run on
this bus: its harness is built on the Redis runtime (``Session.bus`` is an ``EventBus``; each
behaviour starts a ``StreamsBroker`` or ``InProcessWorker``, waits with ``broker.join``,
publishes through ``Runtime.publish``, and checks ``DeadLetter`` records with stream ids,
``redrive`` and ``replay``), none of which a bridge has.  The behaviours that apply are here,
on the Kafka bus's own API: publish and receive, fan-out, filters committed unseen, retries
then success, dead letter after retries, ordering (per key), and a killed worker process
(test_kafka_processes.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from support.runtime import Recorder
from support.waiting import stays, wait_until

from chi_redis import ChiError, Event
from chi_redis.bridges.kafka import KafkaEventBus, KafkaUnsupportedError, kafka_topic
from chi_redis.runtime.subscriptions import Delivery

pytestmark = pytest.mark.kafka

DEADLINE_S = 60.0  # group joins take seconds on tansu; everything else well under one
QUIET_S = 0.5


def ev(type_: str, n: int, **fields: Any) -> Event:
    return Event(type=type_, data={"n": n}, **fields)


def record(rec: Recorder) -> Any:
    def handle(event: Event) -> None:
        rec.add(event.data["n"])

    return handle


def committed(bus: KafkaEventBus, sub: str, topic: str) -> int:
    """How many records of ``topic`` the group of ``sub`` has committed (offsets are
    per-record; tansu's high watermarks count batches, so they are not compared)."""
    import confluent_kafka as ck

    name = kafka_topic(bus.namespace, topic)
    c = ck.Consumer({"bootstrap.servers": bus.bootstrap, "group.id": bus.group_id(sub)})
    try:
        parts = [ck.TopicPartition(name, p) for p in range(bus.partitions)]
        return sum(max(tp.offset, 0) for tp in c.committed(parts, timeout=30))
    finally:
        c.close()


def raw_records(bus: KafkaEventBus, name: str, count: int) -> list[Any]:
    """The first ``count`` records of Kafka topic ``name`` (every partition)."""
    import confluent_kafka as ck

    c = ck.Consumer({"bootstrap.servers": bus.bootstrap, "group.id": f"{name}-raw",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([ck.TopicPartition(name, p, ck.OFFSET_BEGINNING) for p in range(bus.partitions)])
    out: list[Any] = []
    try:
        wait_until(lambda: _poll_into(c, out) >= count, DEADLINE_S, f"{count} records")
        return out
    finally:
        c.close()


def _poll_into(c: Any, out: list[Any]) -> int:
    msg = c.poll(0.2)
    if msg is not None and not msg.error():
        out.append(msg)
    return len(out)


# publishing --------------------------------------------------------------------------------
def test_idempotent_producer_acks_all(kbus: KafkaEventBus) -> None:
    conf = kbus.producer_config()
    assert conf["acks"] == "all" and conf["enable.idempotence"] is True
    assert kbus.producer() is kbus.producer()  # one producer per bus


def test_record_layout_topic_key_and_headers(kbus: KafkaEventBus) -> None:
    keyed = ev("parcel.sent", 1, metadata={"partition_key": "cust-7", "region": "eu"})
    plain = ev("parcel.sent", 2)
    ids = kbus.publish_batch([keyed, plain])
    assert all(i.split(":")[0].isdigit() and i.split(":")[1].isdigit() for i in ids)
    records = raw_records(kbus, f"{kbus.namespace}.parcel", 2)
    by_key = {r.key(): r for r in records}
    assert set(by_key) == {b"cust-7", plain.id.encode()}  # partition key, else the event id
    headers = dict(by_key[b"cust-7"].headers())
    assert headers["chi-type"] == b"parcel.sent" and headers["chi-id"] == keyed.id.encode()
    assert headers["chi-meta"] == b'{"partition_key":"cust-7","region":"eu"}'
    assert headers["chi-enc"] == b"mp"


def test_delay_and_idempotency_key_are_refused(kbus: KafkaEventBus) -> None:
    with pytest.raises(KafkaUnsupportedError, match="no per-message delay"):
        kbus.publish(ev("parcel.sent", 1), delay_ms=1000)
    with pytest.raises(KafkaUnsupportedError, match="idempotency key"):
        kbus.publish(ev("parcel.sent", 1), idempotency_key="k")
    with pytest.raises(ChiError, match="does not support batch_size"):
        kbus.subscribe("batched", types=["parcel.sent"], batch_size=10)


# delivery ----------------------------------------------------------------------------------
def test_publish_and_receive(kbus: KafkaEventBus) -> None:
    got = Recorder()

    @kbus.subscribe("recv", types=["parcel.sent"], start="earliest")
    def handle(event: Event, delivery: Delivery) -> None:
        got.add((event, delivery.subscription, delivery.attempt))

    events = [ev("parcel.sent", i, metadata={"i": i, "ok": True}) for i in range(5)]
    kbus.publish_batch(events)
    kbus.worker().start()
    wait_until(lambda: len(got) == 5, DEADLINE_S, "five events")
    wait_until(lambda: committed(kbus, "recv", "parcel") == 5, DEADLINE_S, "all committed")
    assert sorted(got.items(), key=lambda t: t[0].data["n"]) == [
        (e, "recv", 1) for e in events]  # the whole event, equal field by field


def test_fan_out_to_two_subscriptions(kbus: KafkaEventBus) -> None:
    got = {name: Recorder() for name in ("fan-a", "fan-b")}
    for name, rec in got.items():
        kbus.subscribe(name, types=["bell.rung"], start="earliest")(record(rec))
    kbus.publish_batch([ev("bell.rung", i) for i in range(20)])
    kbus.worker().start()
    for name, rec in got.items():
        wait_until(lambda rec=rec: len(rec) == 20, DEADLINE_S, f"{name}: 20 events")
    assert stays(lambda: all(len(r) == 20 for r in got.values()), QUIET_S)
    for rec in got.values():  # each exactly once, in each group
        assert sorted(rec.items()) == list(range(20))


def test_type_filter_commits_the_rest_unseen(kbus: KafkaEventBus) -> None:
    got = Recorder()
    kbus.subscribe("flt", types=["shop.order.*"], start="earliest")(record(got))
    kbus.publish_batch([ev("shop.order.placed", 0), ev("shop.opened", 1),
                        ev("shop.order.cancelled", 2), ev("shop.closed", 3)])
    kbus.worker().start()
    wait_until(lambda: committed(kbus, "flt", "shop") == 4, DEADLINE_S, "all four committed")
    assert sorted(got.items()) == [0, 2]


def test_per_key_order_with_three_consumers(kbus: KafkaEventBus) -> None:
    got = Recorder()

    @kbus.subscribe("ordered", types=["acct.moved"], start="earliest")
    def handle(event: Event, delivery: Delivery) -> None:
        got.add((event.metadata["partition_key"], event.data["n"], delivery.entry_id))

    keys = [f"acct-{k}" for k in range(6)]
    kbus.publish_batch([ev("acct.moved", n, metadata={"partition_key": k})
                        for n in range(15) for k in keys])
    kbus.worker(threads=3).start()
    wait_until(lambda: len(got) == 90, DEADLINE_S, "90 events")
    for k in keys:
        mine = [(n, entry.split(":")[0]) for key, n, entry in got.items() if key == k]
        assert [n for n, _ in mine] == list(range(15)), k  # in publish order, once each
        assert len({p for _, p in mine}) == 1, k  # one key, one partition


# failures ----------------------------------------------------------------------------------
def test_retries_then_success(kbus: KafkaEventBus) -> None:
    attempts = Recorder()

    @kbus.subscribe("retry-ok", types=["card.charged"], max_retries=3, min_backoff_ms=10,
                    max_backoff_ms=40, start="earliest")
    def flaky(event: Event, delivery: Delivery) -> None:
        attempts.add(delivery.attempt)
        if delivery.attempt < 3:
            raise RuntimeError("not yet")

    kbus.publish(ev("card.charged", 1))
    kbus.worker().start()
    wait_until(lambda: committed(kbus, "retry-ok", "card") == 1, DEADLINE_S, "committed")
    assert attempts.items() == [1, 2, 3]
    assert kbus.dead_letters("retry-ok") == []


def test_dead_letter_after_retries_and_at_once_for_throws(kbus: KafkaEventBus) -> None:
    calls = Recorder()

    class Fatal(Exception):
        pass

    @kbus.subscribe("dl-poison", types=["card.*"], max_retries=2, min_backoff_ms=10,
                    max_backoff_ms=30, throws=(Fatal,), start="earliest")
    def poison(event: Event) -> None:
        calls.add(event.type)
        raise (Fatal if event.type == "card.stolen" else ValueError)("card declined")

    declined, stolen = ev("card.charged", 1), ev("card.stolen", 2)
    kbus.publish_batch([declined, stolen])
    kbus.worker().start()
    wait_until(lambda: len(kbus.dead_letters("dl-poison")) == 2, DEADLINE_S, "2 dead letters")
    by_id = {d["event_id"]: d for d in kbus.dead_letters("dl-poison")}
    assert by_id[declined.id]["reason"] == "retries_exhausted"
    assert by_id[declined.id]["attempts"] == 3
    assert by_id[declined.id]["exception"] == "ValueError"
    assert "card declined" in by_id[declined.id]["error"]
    assert by_id[stolen.id]["reason"] == "not_retryable"
    assert by_id[stolen.id]["attempts"] == 1
    wait_until(lambda: committed(kbus, "dl-poison", "card") == 2, DEADLINE_S, "committed")
    assert sorted(calls.counts().items()) == [("card.charged", 3), ("card.stolen", 1)]


def test_malformed_record_dead_lettered_at_once(kbus: KafkaEventBus) -> None:
    got = Recorder()
    kbus.subscribe("strict", topics=["junk"], start="earliest")(record(got))
    name = kafka_topic(kbus.namespace, "junk")
    kbus.ensure_topics([name])
    producer = kbus.producer()
    producer.produce(name, key=b"x", value=b"\xc1 not msgpack",
                     headers=[("chi-type", b"junk.thing"), ("chi-id", b"bad-1")])
    producer.produce(name, key=b"y", value=b"no headers at all")
    producer.flush(30)
    kbus.publish(ev("junk.fine", 7, topic="junk"))
    kbus.worker().start()
    wait_until(lambda: committed(kbus, "strict", "junk") == 3, DEADLINE_S, "all committed")
    dls = kbus.dead_letters("strict")
    assert sorted((d["reason"], d["attempts"]) for d in dls) == [("decode", 0), ("decode", 0)]
    assert got.items() == [7]


def test_wildcard_subscription_reads_every_topic_of_the_namespace(kbus: KafkaEventBus) -> None:
    got = Recorder()
    kbus.subscribe("wild", types=["*.created"], start="earliest")(record(got))
    kbus.publish_batch([ev("user.created", 0), ev("order.created", 1), ev("order.paid", 2)])
    kbus.worker().start()
    wait_until(lambda: len(got) == 2, DEADLINE_S, "both created events")
    wait_until(lambda: committed(kbus, "wild", "order") == 2, DEADLINE_S, "order committed")
    assert sorted(got.items()) == [0, 1]
