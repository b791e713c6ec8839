"""Runtime conformance, part 1: delivery, filters, retries, dead letters, redrive, malformed
entries and refusals, on every backend (the harness: tests/support/conformance.py; the
backends: tests/support/backends.py and its ``*_session`` modules).

Backends today: ``fakeredis``, ``embedded``, ``redis`` (the shared server), ``redis-own-aof``
(a server the test kills and restarts), ``redis-cluster`` (the session's local cluster),
``rabbitmq`` (the shared broker, :class:`~chi_redis.bridges.rabbitmq.RabbitMQEventBus`) and
``kafka`` (the session's tansu broker, :class:`~chi_redis.bridges.kafka.KafkaEventBus`).
A behaviour that needs a feature some backend lacks carries ``@pytest.mark.needs``: it is
not generated for that backend, and the backend's ``Features.reasons`` say why.

Part 2 (crashes, history, order, batches) is test_runtime_conformance_crashes.py.  Names
are unique per test (and each test has its own namespace).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from support.conformance import QUIET_S, Conformance, ev, record
from support.runtime import Recorder
from support.waiting import stays, wait_until

from chi_redis import ChiError, Event
from chi_redis.events.filters import all_of, metadata, not_, topic_is, type_is
from chi_redis.runtime.subscriptions import Delivery

DEADLINE_S = 60.0  # generous: every wait here finishes in well under a second normally


# delivery ------------------------------------------------------------------------------------
def test_publish_and_receive(backend: Conformance) -> None:
    got = Recorder()

    @backend.bus.subscribe("recv-basic", types=["parcel.sent"])
    def handle(event: Event, delivery: Delivery) -> None:
        got.add((event, delivery.subscription, delivery.attempt))

    backend.start()
    events = [ev("parcel.sent", i, metadata={"i": i, "ok": True}) for i in range(5)]
    backend.publish(*events)
    wait_until(lambda: len(got) == 5, DEADLINE_S, "five events received")
    backend.join("recv-basic")
    assert sorted(got.items(), key=lambda t: t[0].data["n"]) == [
        (e, "recv-basic", 1) for e in events]  # the whole event, equal field by field


def test_fan_out_to_several_subscriptions(backend: Conformance) -> None:
    names = ["fan-a", "fan-b", "fan-c"]
    got = {name: Recorder() for name in names}
    for name in names:
        backend.bus.subscribe(name, types=["bell.rung"])(record(got[name]))
    backend.start()
    backend.bus.publish_batch([ev("bell.rung", i) for i in range(20)])
    for name in names:
        wait_until(lambda name=name: len(got[name]) == 20, DEADLINE_S, f"{name}: 20 events")
        backend.join(name)
    assert stays(lambda: all(len(r) == 20 for r in got.values()), QUIET_S)
    for name in names:  # each exactly once
        assert sorted(got[name].items()) == list(range(20)), name


def test_filters_deliver_matches_and_ack_the_rest_unseen(backend: Conformance) -> None:
    got = {name: Recorder() for name in ("flt-glob", "flt-deep", "flt-topic", "flt-meta")}
    backend.bus.subscribe("flt-glob", types=["shop.order.*"])(record(got["flt-glob"]))
    backend.bus.subscribe("flt-deep", types=["shop.**"])(record(got["flt-deep"]))
    backend.bus.subscribe("flt-topic", topics=["shop", "mail"],
                          filter=topic_is("mail"))(record(got["flt-topic"]))
    backend.bus.subscribe("flt-meta", types=["shop.*", "shop.order.*"], filter=all_of(
        metadata(region="eu"), not_(type_is("shop.order.cancelled"))))(record(got["flt-meta"]))
    backend.start()
    backend.bus.publish_batch([
        ev("shop.order.placed", 0, metadata={"region": "eu"}),
        ev("shop.order.cancelled", 1, metadata={"region": "eu"}),
        ev("shop.opened", 2, metadata={"region": "eu"}),
        ev("shop.order.placed", 3, metadata={"region": "us"}),
        ev("mail.sent", 4, metadata={"region": "eu"}),
        ev("shop.closed", 5),
        ev("shop.order.item.added", 6, metadata={"region": "eu"}),
    ])
    for name in got:  # join: nothing in flight, nothing unread — the non-matching were acked
        backend.join(name)
    assert stays(lambda: sum(len(r) for r in got.values()) == 12, QUIET_S)
    assert sorted(got["flt-glob"].items()) == [0, 1, 3]
    assert sorted(got["flt-deep"].items()) == [0, 1, 2, 3, 5, 6]
    assert sorted(got["flt-topic"].items()) == [4]
    assert sorted(got["flt-meta"].items()) == [0, 2]


def test_wildcard_subscription_gets_topics_that_appear_after_it_started(
    backend: Conformance,
) -> None:
    """``*.created`` binds every topic, also those first written after the worker started:
    their events from the first one on (Redis: found by the consumer's sweep, read from
    their first entry; RabbitMQ: the binding key; Kafka: the topic pattern, a partition
    without a commit read from its beginning)."""
    got = Recorder()
    backend.bus.subscribe("wild", types=["*.created"])(record(got))
    backend.start()
    backend.bus.publish_batch([ev("user.created", 0), ev("order.created", 1),
                               ev("order.paid", 2), ev("user.created", 3)])
    wait_until(lambda: len(got) == 3, DEADLINE_S, "the three created events")
    backend.join("wild")
    assert stays(lambda: sorted(got.items()) == [0, 1, 3], QUIET_S)


# failures -------------------------------------------------------------------------------------
def test_retries_with_backoff_then_success(backend: Conformance) -> None:
    attempts, at = Recorder(), Recorder()

    @backend.bus.subscribe("retry-ok", types=["card.charged"], max_retries=3,
                           min_backoff_ms=100, max_backoff_ms=400)
    def flaky(event: Event, delivery: Delivery) -> None:
        at.add(time.monotonic())
        attempts.add(delivery.attempt)
        if delivery.attempt < 3:
            raise RuntimeError("not yet")

    backend.start()
    backend.publish(ev("card.charged", 1))
    wait_until(lambda: attempts.items() == [1, 2, 3], DEADLINE_S, "three attempts")
    backend.join("retry-ok")
    assert stays(lambda: attempts.items() == [1, 2, 3], QUIET_S)
    assert backend.dead_letters("retry-ok") == []
    times = at.items()  # a retry never comes before min_backoff_ms (later ones wait longer)
    assert all(b - a >= 0.099 for a, b in itertools.pairwise(times)), times


def test_dead_letter_after_exhausting_retries(backend: Conformance) -> None:
    calls, where = Recorder(), Recorder()

    @backend.bus.subscribe("dl-poison", types=["card.charged"], max_retries=2,
                           min_backoff_ms=10, max_backoff_ms=30)
    def poison(event: Event, delivery: Delivery) -> None:
        calls.add(event.id)
        where.add((delivery.stream, delivery.entry_id))
        raise ValueError("card declined")

    backend.start()
    event = ev("card.charged", 1)
    (sid,) = backend.publish(event)
    wait_until(lambda: backend.dead_letters("dl-poison"), DEADLINE_S, "a dead letter")
    backend.join("dl-poison")
    (dl,) = backend.dead_letters("dl-poison")
    assert dl.reason == "retries_exhausted"
    assert dl.error_type == "ValueError" and "card declined" in dl.error
    assert dl.subscription == "dl-poison" and dl.kind == "event"
    assert dl.event_id == event.id and dl.type == "card.charged" and dl.topic == "card"
    # provenance: where the handler got it, which is what publish returned
    assert set(where.items()) == {(dl.source_stream, dl.source_id)} and dl.source_id == sid
    assert dl.attempts == 3 and dl.deliveries >= 1
    assert 0 < dl.first_failure_ms <= dl.last_failure_ms
    assert stays(lambda: len(calls) == 3, QUIET_S)  # 1 + max_retries, then never again


def test_error_in_throws_is_dead_lettered_without_retry(backend: Conformance) -> None:
    calls = Recorder()

    class Fatal(Exception):
        pass

    @backend.bus.subscribe("dl-fatal", types=["card.stolen"], max_retries=3,
                           min_backoff_ms=10, throws=(Fatal,))
    def fatal(event: Event) -> None:
        calls.add(event.id)
        raise Fatal("stolen card")

    backend.start()
    backend.publish(ev("card.stolen", 1))
    (dl,) = wait_until(lambda: backend.dead_letters("dl-fatal"), DEADLINE_S, "a dead letter")
    backend.join("dl-fatal")
    assert (dl.reason, dl.error_type, dl.attempts) == ("not_retryable", "Fatal", 1)
    assert stays(lambda: len(calls) == 1, QUIET_S)


@pytest.mark.needs("time_limit")
def test_handler_time_limit_interrupts_then_dead_letters(backend: Conformance) -> None:
    finished = Recorder()

    @backend.bus.subscribe("slowpoke", types=["job.run"], time_limit_ms=200, max_retries=0)
    def slow(event: Event) -> None:
        for _ in range(600):  # async exceptions land between bytecodes, not inside sleep()
            time.sleep(0.1)
        finished.add(event.id)

    backend.start()
    backend.publish(ev("job.run", 1))
    (dl,) = wait_until(lambda: backend.dead_letters("slowpoke"), DEADLINE_S, "a dead letter")
    backend.join("slowpoke")
    assert (dl.reason, dl.error_type) == ("retries_exhausted", "TimeLimitExceeded")
    assert finished.items() == []


@pytest.mark.needs("redrive")
def test_redrive_a_dead_letter_is_handled_once(backend: Conformance) -> None:
    fixed = {"yes": False}
    failed, runs = Recorder(), Recorder()

    @backend.bus.subscribe("dl-fixme", types=["card.charged"], max_retries=0)
    def fixme(event: Event, delivery: Delivery) -> None:
        if not fixed["yes"]:
            failed.add((delivery.stream, delivery.entry_id))
            raise RuntimeError("payment service down")
        runs.add((event.id, delivery.stream, delivery.entry_id, delivery.attempt))

    backend.start()
    event = ev("card.charged", 1)
    (sid,) = backend.publish(event)
    (dl,) = wait_until(lambda: backend.dead_letters("dl-fixme"), DEADLINE_S, "a dead letter")
    backend.join("dl-fixme")
    assert (dl.reason, dl.attempts) == ("retries_exhausted", 1) and dl.deliveries >= 1
    fixed["yes"] = True
    assert backend.redrive("dl-fixme") == 1
    wait_until(lambda: len(runs) == 1, DEADLINE_S, "the redriven event handled")
    assert backend.redrive("dl-fixme") == 0  # moved already: nothing to redrive twice
    backend.join("dl-fixme")
    assert stays(lambda: len(runs) == 1, QUIET_S)
    ((stream, entry_id),) = failed.items()
    assert entry_id == sid
    ((event_id, redriven_stream, redriven_entry, attempt),) = runs.items()
    assert (event_id, redriven_stream, attempt) == (event.id, stream, 1)  # a fresh budget
    if backend.spec.features.redrive_same_entry:  # provenance: the entry it was published as
        assert redriven_entry == sid
    else:  # a copy, after the original
        assert redriven_entry != sid
    assert backend.dead_letters("dl-fixme") == []


def test_malformed_entry_dead_lettered_without_the_handler(backend: Conformance) -> None:
    """An entry no chi publisher would write (the envelope of an event, a payload that is not
    MessagePack) is dead-lettered at once, reason ``decode``; the events around it run."""
    got = Recorder()
    backend.bus.subscribe("strict", types=["doc.saved"], max_retries=3,
                          min_backoff_ms=10)(record(got))
    backend.prepare()
    backend.publish(ev("doc.saved", 0))
    source = backend.session.inject_malformed("doc", "doc.saved", "bad-1")
    backend.publish(ev("doc.saved", 1))
    backend.run()
    (dl,) = wait_until(lambda: backend.dead_letters("strict"), DEADLINE_S, "a dead letter")
    wait_until(lambda: len(got) == 2, DEADLINE_S, "the two good events")
    backend.join("strict")
    assert stays(lambda: sorted(got.items()) == [0, 1], QUIET_S)
    assert (dl.reason, dl.error_type, dl.kind) == ("decode", "DecodeError", "event")
    assert (dl.event_id, dl.type, dl.source_id) == ("bad-1", "doc.saved", source)
    assert len(backend.dead_letters("strict")) == 1


# what a backend cannot do --------------------------------------------------------------------
#: Each option a backend may refuse (``Features.refuses``): how it is asked for, and what the
#: error must name.
REFUSABLE: dict[str, tuple[Callable[[Any], Any], str]] = {
    "priority": (lambda bus: bus.subscribe("r-prio", types=["a.b"], priority=1), "priority"),
    "start_earliest": (lambda bus: bus.subscribe("r-start", types=["a.b"], start="earliest"),
                       "start"),
    "time_limit_ms": (lambda bus: bus.subscribe("r-limit", types=["a.b"], time_limit_ms=50),
                      "time_limit_ms"),
    "batch_size": (lambda bus: bus.subscribe("r-batch", types=["a.b"], batch_size=8),
                   "batch_size"),
    "dedupe": (lambda bus: bus.subscribe("r-dedupe", types=["a.b"], dedupe=True), "dedupe"),
    "max_deliveries": (lambda bus: bus.subscribe("r-cap", types=["a.b"], max_deliveries=3),
                       "max_deliveries"),
    "idempotency_key": (lambda bus: bus.publish(ev("a.b", 1), idempotency_key="k"),
                        "idempotency.key"),
    "delay_ms": (lambda bus: bus.publish(ev("a.b", 1), delay_ms=1000), "delay"),
}


@pytest.mark.needs("refuses")
def test_what_the_bus_cannot_do_is_refused_clearly(backend: Conformance) -> None:
    """Each option the backend lacks raises a ChiError naming it, and nothing is registered
    or published meanwhile."""
    got = Recorder()
    for name in sorted(backend.spec.features.refuses):
        ask, named = REFUSABLE[name]
        with pytest.raises(ChiError) as info:
            ask(backend.bus)
        assert re.search(named, str(info.value)), (name, str(info.value))
    assert not [s for s in backend.bus.subscriptions if s.startswith("r-")]
    backend.bus.subscribe("r-after", types=["a.b"])(record(got))
    backend.start()
    backend.publish(ev("a.b", 2))
    wait_until(lambda: len(got) == 1, DEADLINE_S, "the event after the refusals")
    backend.join("r-after")
    assert stays(lambda: got.items() == [2], QUIET_S)  # the refused publishes sent nothing
