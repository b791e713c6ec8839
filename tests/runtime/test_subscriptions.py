"""Subscriptions on the broker: sync and async handlers, the delivery context, dedupe,
filters (non-matching entries acked without a handler run), priority, and fan-out exactness
(4 subscriptions, 2,000 events).  On fakeredis and on the real server."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from support import Recorder, Runtime, drained, stays, wait_until

from chi_redis import Event
from chi_redis.events.filters import all_of, any_of, metadata, not_, type_is
from chi_redis.runtime.subscriptions import Delivery


def test_sync_and_async_handlers_and_the_delivery_context(rt: Runtime) -> None:
    seen = Recorder()

    @rt.bus.subscribe("sync-plain", types=["member.created"])
    def plain(event: Event) -> None:
        seen.add(("sync", event.id, event.data["name"], None))

    @rt.bus.subscribe("async-ctx", types=["member.created"])
    async def with_ctx(event: Event, delivery: Delivery) -> None:
        await asyncio.sleep(0.01)
        seen.add(("async", event.id, event.data["name"], delivery))

    broker = rt.broker()
    rt.worker(broker)
    event = Event(type="member.created", data={"name": "ada"}, metadata={"region": "eu"})
    (sid,) = rt.publish(event)
    broker.join("sync-plain", timeout=30_000)
    broker.join("async-ctx", timeout=30_000)
    by_kind = {kind: (eid, name, d) for kind, eid, name, d in seen.items()}
    assert len(seen) == 2
    assert by_kind["sync"] == (event.id, "ada", None)
    eid, name, delivery = by_kind["async"]
    assert (eid, name) == (event.id, "ada")
    assert delivery == Delivery(subscription="async-ctx", attempt=1,
                                stream=rt.bus.keys.stream("member"), entry_id=sid, replay=False)


def test_dedupe_runs_the_handler_once_per_event_id(rt: Runtime) -> None:
    """The same event id arriving twice (a raw XADD copy of the entry) runs a ``dedupe=True``
    handler once; a subscription without dedupe sees both entries."""
    once = Recorder()
    twice = Recorder()

    @rt.bus.subscribe("deduped", types=["member.created"], dedupe=True)
    def deduped(event: Event) -> None:
        once.add(event.id)

    @rt.bus.subscribe("plain", types=["member.created"])
    def plain(event: Event) -> None:
        twice.add(event.id)

    broker = rt.broker()
    rt.worker(broker)
    event = Event(type="member.created", data={"n": 1})
    (sid,) = rt.publish(event)
    wait_until(lambda: len(once) == 1 and len(twice) == 1, message="first delivery")
    stream = rt.bus.keys.stream("member")
    entries: Any = rt.client.xrange(stream, sid, sid)
    ((_, copy),) = entries
    rt.client.xadd(stream, copy)  # a duplicate entry, as after a retried XADD
    wait_until(lambda: len(twice) == 2, message="the copy reached the plain subscription")
    wait_until(lambda: drained(rt.client, rt.bus, "deduped", ["member"]), message="copy acked")
    assert once.items() == [event.id]
    assert twice.items() == [event.id, event.id]


def test_filters_and_non_matching_entries_are_acked(rt: Runtime) -> None:
    got: dict[str, Recorder] = {}

    def sub(name: str, **kw: Any) -> None:
        got[name] = Recorder()

        def handle(event: Event) -> None:
            got[name].add(event.data["n"])

        rt.bus.subscribe(name, **kw)(handle)

    sub("member-star", types=["member.*"])  # one segment: not member.profile.updated
    sub("star-created", types=["*.created"])  # any topic, one segment
    sub("eu-carts", types=["cart.*"], filter=metadata(region="eu"))
    sub("combo", topics=["cart"], filter=any_of(
        metadata(vip=True), all_of(type_is("cart.paid"), not_(metadata(region="us")))))
    broker = rt.broker()
    rt.worker(broker)
    events = [
        Event(type="member.created", data={"n": 0}),
        Event(type="member.deleted", data={"n": 1}, metadata={"region": "eu"}),
        Event(type="member.profile.updated", data={"n": 2}),
        Event(type="member.profile.created", data={"n": 3}),
        Event(type="cart.created", data={"n": 4}, metadata={"region": "eu"}),
        Event(type="cart.paid", data={"n": 5}, metadata={"region": "us"}),
        Event(type="cart.paid", data={"n": 6}, metadata={"region": "eu"}),
        Event(type="cart.created", data={"n": 7}, metadata={"vip": True, "region": "us"}),
        Event(type="cart.created", data={"n": 8}, metadata={"vip": "true"}),  # not bool True
        Event(type="cart.paid", data={"n": 9}),
        Event(type="ship.created", data={"n": 10}),
    ]
    rt.publish(*events)
    bound = {"member-star": ["member"], "star-created": ["member", "cart", "ship"],
             "eu-carts": ["cart"], "combo": ["cart"]}
    for name, topics in bound.items():
        wait_until(partial(drained, rt.client, rt.bus, name, topics), message=f"{name} drained")
        broker.join(name, timeout=30_000)
    assert sorted(got["member-star"].items()) == [0, 1]
    assert sorted(got["star-created"].items()) == [0, 4, 7, 8, 10]
    assert sorted(got["eu-carts"].items()) == [4, 6]
    assert sorted(got["combo"].items()) == [6, 7, 9]


def test_higher_priority_runs_first_among_prefetched_messages(rt: Runtime) -> None:
    """One worker thread, busy; the low- and the high-priority subscription each have
    entries prefetched (2 each: the prefetch of one thread).  When the thread frees up, the
    prefetched high-priority entries run before any waiting low-priority one.  (Priority
    orders what is already prefetched; it does not reorder what is still in Redis.)"""
    order = Recorder()
    gate = threading.Event()
    busy = threading.Event()

    @rt.bus.subscribe("low", types=["job.low"], priority=0)
    def low(event: Event) -> None:
        if event.data["n"] == 0:
            busy.set()
            gate.wait(30)
        order.add(("low", event.data["n"]))

    @rt.bus.subscribe("high", types=["job.high"], priority=10)
    def high(event: Event) -> None:
        order.add(("high", event.data["n"]))

    broker = rt.broker()
    worker = rt.worker(broker, threads=1)
    rt.publish(Event(type="job.low", data={"n": 0}))
    assert busy.wait(30), "the worker thread took the first entry"
    rt.publish(*(Event(type="job.low", data={"n": i}) for i in range(1, 4)))
    rt.publish(*(Event(type="job.high", data={"n": i}) for i in range(1, 4)))
    states = broker.states
    wait_until(lambda: len(states["low"].inflight) == 2 and len(states["high"].inflight) == 2,
               message="both subscriptions prefetched while the thread is busy")
    # Prefetched means handed to the Worker's priority queue, not just read from Redis.
    wait_until(lambda: worker.work_queue.qsize() == 3,
               message="low 1, high 1 and high 2 waiting in the Worker's queue")
    gate.set()
    broker.join("low", timeout=30_000)
    broker.join("high", timeout=30_000)
    ran = order.items()
    assert ran[0] == ("low", 0)
    assert ran[1:3] == [("high", 1), ("high", 2)]
    assert sorted(ran) == sorted([("low", i) for i in range(4)] + [("high", i) for i in (1, 2, 3)])


def test_fan_out_is_exact(rt: Runtime) -> None:
    """4 subscriptions (two type globs, one of them across all topics, one explicit topic)
    and 2,000 events over 4 topics: each gets exactly its matching events, each once."""
    counts: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()
    rules: dict[str, Callable[[str], bool]] = {
        "fan-member-created": lambda t: t == "member.created",
        "fan-cart-glob": lambda t: t.startswith("cart."),
        "fan-any-created": lambda t: t.endswith(".created"),
        "fan-payment-topic": lambda t: t.startswith("payment."),
    }
    kwargs: dict[str, dict[str, Any]] = {
        "fan-member-created": {"types": ["member.created"]},
        "fan-cart-glob": {"types": ["cart.*"]},
        "fan-any-created": {"types": ["*.created"]},
        "fan-payment-topic": {"topics": ["payment"]},
    }
    def handler(name: str) -> Any:
        def handle(event: Event) -> None:
            with lock:
                counts[(name, event.id)] += 1
        return handle

    for name, kw in kwargs.items():
        rt.bus.subscribe(name, **kw)(handler(name))
    broker = rt.broker()
    rt.worker(broker, threads=4)
    types = ["member.created", "member.updated", "cart.created", "cart.paid", "payment.created",
             "payment.failed", "ship.created"]
    rng = random.Random(3)
    events = [Event(type=rng.choice(types), data={"i": i}) for i in range(2000)]
    rt.bus.publish_batch(events)
    expected = {
        name: {e.id for e in events if rule(e.type)} for name, rule in rules.items()
    }
    total = sum(len(v) for v in expected.values())

    def done() -> bool:
        with lock:
            return sum(counts.values()) >= total

    wait_until(done, 120, interval=0.1, message=f"{total} handler runs")
    for name in rules:
        broker.join(name, timeout=60_000)
    assert stays(lambda: sum(counts.values()) == total, 0.3)
    with lock:
        for name, ids in expected.items():
            got = {eid for (sub, eid) in counts if sub == name}
            assert got == ids, name
        assert set(counts.values()) == {1}
