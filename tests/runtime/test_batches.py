"""Batch subscriptions (``batch_size=``, docs/design.md §5.10), in-process, on fakeredis and
on the real server: batch sizes and the gathering wait, whole-batch retries, a poison event
isolated by splitting (only it dead-lettered), partial success (``BatchFailed``), entries
that do not decode, filters, dedupe, a targeted replay and a redrive into a batch
subscription.  Killed worker processes: tests/runtime/test_batch_processes.py."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

import pytest
import redis
from support import Recorder, Runtime, dlq_len, drained, stays, wait_until
from support.servers import RedisServers

from chi_redis import BatchFailed, Event, EventBus, ValidationError
from chi_redis.events.filters import metadata
from chi_redis.ops.replay import choose_target, replay
from chi_redis.ops.timeparse import parse_time
from chi_redis.runtime.subscriptions import Delivery

DEADLINE_S = 60.0
QUIET_S = 0.5


def ev(type_: str, n: int, **fields: Any) -> Event:
    return Event(type=type_, data={"n": n}, **fields)


def sizes(rec: Recorder) -> list[int]:
    return sorted(len(batch) for batch in rec.items())


def flat(rec: Recorder) -> list[int]:
    return sorted(n for batch in rec.items() for n in batch)


def record(rec: Recorder) -> Any:
    """A batch handler that records each batch's ``data["n"]`` values."""

    def handle(events: list[Event]) -> None:
        rec.add([e.data["n"] for e in events])

    return handle


def drain(rt: Runtime, broker: Any, sub: str, topics: list[str]) -> None:
    wait_until(partial(drained, rt.client, rt.bus, sub, topics), DEADLINE_S, f"{sub} drained")
    broker.join(sub, timeout=int(DEADLINE_S * 1000))


# declaring -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kw", "field"), [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": -3}, "batch_size"),
    ({"batch_size": 10_001}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"batch_size": "10"}, "batch_size"),
    ({"batch_wait_ms": 50}, "batch_wait_ms"),  # without batch_size
    ({"batch_size": 10, "batch_wait_ms": -1}, "batch_wait_ms"),
    ({"batch_size": 10, "batch_wait_ms": 60_001}, "batch_wait_ms"),
    ({"batch_size": 10, "batch_wait_ms": 1.5}, "batch_wait_ms"),
])
def test_bad_batch_settings_are_rejected_at_the_decorator(
    fake_client: redis.Redis, ns: str, kw: dict[str, Any], field: str
) -> None:
    bus = EventBus(fake_client, namespace=ns)
    with pytest.raises(ValidationError) as info:
        bus.subscribe("bad", topics=["x"], **kw)
    assert info.value.field == field
    assert bus.subscriptions == {}


def test_the_registry_records_the_batch_settings(rt: Runtime) -> None:
    rt.bus.subscribe("rec-batch", topics=["x"], batch_size=50)(record(Recorder()))
    rt.bus.subscribe("rec-single", topics=["x"])(lambda e: None)
    rt.broker()
    from chi_redis.ops.registry import registered

    batch, single = registered(rt.bus, "rec-batch"), registered(rt.bus, "rec-single")
    assert (batch.batch_size, batch.batch_wait_ms) == (50, 100)
    assert (single.batch_size, single.batch_wait_ms) == (None, None)


# delivery --------------------------------------------------------------------------------------
def test_full_batches_at_once_and_the_rest_after_the_wait(rt: Runtime) -> None:
    got = Recorder()
    rt.bus.subscribe("fill", topics=["tick"], batch_size=10, batch_wait_ms=200)(record(got))
    broker = rt.broker()  # the group exists: the events below are waiting for it
    rt.bus.publish_batch([ev("tick.tocked", i) for i in range(25)])
    rt.worker(broker)
    wait_until(lambda: len(flat(got)) == 25, DEADLINE_S, "25 events in batches")
    drain(rt, broker, "fill", ["tick"])
    assert stays(lambda: len(got) == 3, QUIET_S)
    assert sizes(got) == [5, 10, 10]
    assert flat(got) == list(range(25))  # each exactly once


def test_a_partial_batch_waits_for_more_entries_until_it_is_full(rt: Runtime) -> None:
    got = Recorder()
    rt.bus.subscribe("patient", topics=["tick"], batch_size=5,
                     batch_wait_ms=60_000)(record(got))
    broker = rt.broker()
    rt.worker(broker)
    rt.bus.publish_batch([ev("tick.tocked", i) for i in range(3)])
    assert stays(lambda: len(got) == 0, QUIET_S)  # three of five, well within the wait
    rt.bus.publish_batch([ev("tick.tocked", i) for i in range(3, 5)])
    wait_until(lambda: len(got) == 1, DEADLINE_S, "the batch, once full")
    drain(rt, broker, "patient", ["tick"])
    assert got.items() == [[0, 1, 2, 3, 4]]  # one batch, in stream order


def test_async_handler_and_the_deliveries(rt: Runtime) -> None:
    got = Recorder()

    @rt.bus.subscribe("async-batch", topics=["member"], batch_size=3, batch_wait_ms=50,
                      priority=7)
    async def handle(events: list[Event], deliveries: list[Delivery]) -> None:
        await asyncio.sleep(0.01)
        got.add([(e.data["n"], d) for e, d in zip(events, deliveries, strict=True)])

    broker = rt.broker()
    sids = rt.bus.publish_batch([ev("member.created", i) for i in range(3)])
    rt.worker(broker)
    wait_until(lambda: len(got) == 1, DEADLINE_S, "one batch")
    drain(rt, broker, "async-batch", ["member"])
    stream = rt.bus.keys.stream("member")
    assert got.items() == [[
        (i, Delivery(subscription="async-batch", attempt=1, stream=stream, entry_id=sids[i]))
        for i in range(3)]]
    assert broker.get_actor("async-batch").priority == -7  # higher runs first, as for events


# failures --------------------------------------------------------------------------------------
def test_a_failing_batch_is_retried_whole_then_succeeds(rt: Runtime) -> None:
    calls = Recorder()

    @rt.bus.subscribe("retry-batch", topics=["card"], batch_size=10, batch_wait_ms=50,
                      max_retries=3, min_backoff_ms=10, max_backoff_ms=40)
    def flaky(events: list[Event], deliveries: list[Delivery]) -> None:
        calls.add(([e.data["n"] for e in events], [(d.attempt, d.entry_id) for d in deliveries]))
        if deliveries[0].attempt < 3:
            raise RuntimeError("not yet")

    broker = rt.broker()
    sids = rt.bus.publish_batch([ev("card.charged", i) for i in range(6)])
    rt.worker(broker)
    wait_until(lambda: len(calls) == 3, DEADLINE_S, "three attempts")
    drain(rt, broker, "retry-batch", ["card"])
    assert stays(lambda: len(calls) == 3, QUIET_S)
    # the same six events each time, their provenance kept through the retry copies
    assert calls.items() == [
        (list(range(6)), [(attempt, sid) for sid in sids]) for attempt in (1, 2, 3)]
    assert rt.bus.dead_letters("retry-batch") == []


def test_a_poison_event_is_isolated_by_splitting_and_dead_lettered_alone(rt: Runtime) -> None:
    calls = Recorder()
    handled = Recorder()

    @rt.bus.subscribe("bisect", topics=["pay"], batch_size=16, batch_wait_ms=100,
                      max_retries=1, min_backoff_ms=10, max_backoff_ms=20)
    def pay(events: list[Event]) -> None:
        ns = [e.data["n"] for e in events]
        calls.add(ns)
        if 11 in ns:
            raise ValueError("card 11 declined")
        for n in ns:
            handled.add(n)

    broker = rt.broker()
    events = [ev("pay.due", i) for i in range(16)]
    sids = rt.bus.publish_batch(events)
    rt.worker(broker)
    wait_until(lambda: rt.bus.dead_letters("bisect"), DEADLINE_S, "a dead letter")
    drain(rt, broker, "bisect", ["pay"])
    assert stays(lambda: len(handled) == 15, QUIET_S)
    assert sorted(handled.items()) == [n for n in range(16) if n != 11]  # each once
    (dl,) = rt.bus.dead_letters("bisect")
    assert (dl.reason, dl.kind, dl.error_type) == ("retries_exhausted", "event", "ValueError")
    assert "card 11 declined" in dl.error
    assert (dl.event_id, dl.type, dl.topic) == (events[11].id, "pay.due", "pay")
    assert (dl.source_stream, dl.source_id) == (rt.bus.keys.stream("pay"), sids[11])
    # 2 runs of the whole batch, then halves of 8, 4, 2 and 1 holding it: no loop
    with_poison = [c for c in calls.items() if 11 in c]
    assert [len(c) for c in with_poison] == [16, 16, 8, 4, 2, 1]
    assert dl.attempts == 6


def test_partial_success_retries_only_the_events_named_failed(rt: Runtime) -> None:
    calls = Recorder()
    handled = Recorder()

    @rt.bus.subscribe("partial", topics=["mail"], batch_size=10, batch_wait_ms=50,
                      max_retries=2, min_backoff_ms=10, max_backoff_ms=20)
    def send(events: list[Event], deliveries: list[Delivery]) -> None:
        attempt = deliveries[0].attempt
        calls.add((attempt, [e.data["n"] for e in events]))
        failed: list[Any] = [e for e in events if e.data["n"] % 3 == 0 and attempt == 1]
        failed += [e.id for e in events if e.data["n"] == 4]  # ids work too; 4 never succeeds
        for e in events:
            if e not in failed and e.id not in failed:
                handled.add(e.data["n"])
        if failed:
            raise BatchFailed(failed, cause=ConnectionError("smtp down"))

    broker = rt.broker()
    events = [ev("mail.queued", i) for i in range(8)]
    rt.bus.publish_batch(events)
    rt.worker(broker)
    wait_until(lambda: rt.bus.dead_letters("partial"), DEADLINE_S, "a dead letter")
    drain(rt, broker, "partial", ["mail"])
    assert stays(lambda: len(calls) == 3, QUIET_S)
    assert calls.items() == [(1, list(range(8))), (2, [0, 3, 4, 6]), (3, [4])]
    assert sorted(handled.items()) == [0, 1, 2, 3, 5, 6, 7]  # each once
    (dl,) = rt.bus.dead_letters("partial")
    assert (dl.event_id, dl.reason, dl.attempts) == (events[4].id, "retries_exhausted", 3)
    assert dl.error_type == "ConnectionError" and "smtp down" in dl.error


def test_an_entry_that_does_not_decode_is_dead_lettered_and_the_rest_handled(
    rt: Runtime,
) -> None:
    got = Recorder()
    rt.bus.subscribe("undecodable", topics=["doc"], batch_size=10,
                     batch_wait_ms=50)(record(got))
    broker = rt.broker()
    rt.bus.publish_batch([ev("doc.saved", i) for i in range(3)])
    stream = rt.bus.keys.stream("doc")
    bad = {"id": "bad-1", "type": "doc.saved", "ts": "1", "ver": "1.0", "meta": "{}",
           "enc": "mp", "data": b"\xc1"}  # 0xc1: never valid MessagePack
    bad_sid = rt.client.xadd(stream, bad)
    rt.bus.publish_batch([ev("doc.saved", i) for i in range(3, 5)])
    rt.worker(broker)
    wait_until(lambda: rt.bus.dead_letters("undecodable"), DEADLINE_S, "a dead letter")
    drain(rt, broker, "undecodable", ["doc"])
    assert flat(got) == list(range(5))
    (dl,) = rt.bus.dead_letters("undecodable")
    assert (dl.reason, dl.event_id, dl.kind) == ("decode", "bad-1", "event")
    assert dl.source_id == (bad_sid.decode() if isinstance(bad_sid, bytes) else bad_sid)


# filters, dedupe, replay, redrive ----------------------------------------------------------------
def test_filters_deliver_matching_events_in_batches_and_ack_the_rest(rt: Runtime) -> None:
    got = Recorder()
    rt.bus.subscribe("eu-orders", topics=["shop"], filter=metadata(region="eu"),
                     batch_size=4, batch_wait_ms=50)(record(got))
    broker = rt.broker()
    rt.bus.publish_batch([ev("shop.ordered", i, metadata={"region": "eu" if i % 2 else "us"})
                          for i in range(20)])
    rt.worker(broker)
    drain(rt, broker, "eu-orders", ["shop"])  # nothing pending: the others were acked
    assert stays(lambda: len(flat(got)) == 10, QUIET_S)
    assert flat(got) == list(range(1, 20, 2))
    assert max(sizes(got)) <= 4


def test_dedupe_skips_an_event_id_already_handled(rt: Runtime) -> None:
    got = Recorder()
    rt.bus.subscribe("dedupe-batch", topics=["member"], batch_size=5, batch_wait_ms=50,
                     dedupe=True)(record(got))
    broker = rt.broker()
    rt.worker(broker)
    events = [ev("member.created", i) for i in range(3)]
    sids = rt.bus.publish_batch(events)
    wait_until(lambda: len(flat(got)) == 3, DEADLINE_S, "first delivery")
    stream = rt.bus.keys.stream("member")
    for sid in sids[:2]:  # raw copies of two entries, as after a retried XADD
        ((_, copy),) = rt.client.xrange(stream, sid, sid)
        rt.client.xadd(stream, copy)
    rt.bus.publish(ev("member.created", 3))
    wait_until(lambda: len(flat(got)) == 4, DEADLINE_S, "the new event")
    drain(rt, broker, "dedupe-batch", ["member"])
    assert stays(lambda: flat(got) == [0, 1, 2, 3], QUIET_S)  # the copies were skipped


def test_a_targeted_replay_reaches_a_batch_subscription(rt: Runtime) -> None:
    sids = rt.bus.publish_batch([ev("ledger.posted", i) for i in range(10)])
    got = Recorder()

    @rt.bus.subscribe("replay-batch", topics=["ledger"], batch_size=10, batch_wait_ms=50)
    def audit(events: list[Event], deliveries: list[Delivery]) -> None:
        got.add([(e.data["n"], d.replay, d.entry_id) for e, d in zip(events, deliveries,
                                                                      strict=True)])

    broker = rt.broker()  # start="new": only the replay reaches the events above
    rt.worker(broker)
    target, topics = choose_target(rt.bus, to_sub="replay-batch")
    report = replay(rt.bus, target, topics=topics, since=parse_time(sids[3]),
                    until=parse_time(sids[6]))
    assert report.delivered == 4
    wait_until(lambda: sum(len(b) for b in got.items()) == 4, DEADLINE_S, "the range")
    drain(rt, broker, "replay-batch", ["ledger"])
    delivered = sorted(item for batch in got.items() for item in batch)
    assert delivered == [(i, True, sids[i]) for i in range(3, 7)]


def test_redrive_into_a_batch_subscription_is_handled_once(rt: Runtime) -> None:
    fixed = {"yes": False}
    handled = Recorder()

    @rt.bus.subscribe("redrive-batch", topics=["card"], batch_size=4, batch_wait_ms=50,
                      max_retries=0)
    def charge(events: list[Event], deliveries: list[Delivery]) -> None:
        if not fixed["yes"] and any(e.data["n"] == 2 for e in events):
            raise RuntimeError("payment service down")
        for e, d in zip(events, deliveries, strict=True):
            handled.add((e.data["n"], d.entry_id))

    broker = rt.broker()
    sids = rt.bus.publish_batch([ev("card.charged", i) for i in range(4)])
    rt.worker(broker)
    wait_until(lambda: rt.bus.dead_letters("redrive-batch"), DEADLINE_S, "a dead letter")
    drain(rt, broker, "redrive-batch", ["card"])
    assert sorted(handled.items()) == [(n, sids[n]) for n in (0, 1, 3)]
    fixed["yes"] = True
    assert rt.bus.redrive("redrive-batch") == 1
    wait_until(lambda: len(handled) == 4, DEADLINE_S, "the redriven event")
    drain(rt, broker, "redrive-batch", ["card"])
    assert rt.bus.redrive("redrive-batch") == 0
    assert stays(lambda: len(handled) == 4, QUIET_S)
    assert sorted(handled.items()) == [(n, sids[n]) for n in range(4)]  # provenance kept
    assert rt.bus.dead_letters("redrive-batch") == []


def test_an_exception_in_throws_splits_at_once_and_is_not_retryable(rt: Runtime) -> None:
    calls = Recorder()

    class Declined(Exception):
        pass

    @rt.bus.subscribe("throws-batch", topics=["pay"], batch_size=4, batch_wait_ms=50,
                      max_retries=5, min_backoff_ms=10_000, throws=(Declined,))
    def pay(events: list[Event]) -> None:
        calls.add([e.data["n"] for e in events])
        if any(e.data["n"] == 0 for e in events):
            raise Declined("card 0 declined")

    broker = rt.broker()
    events = [ev("pay.due", i) for i in range(4)]
    rt.bus.publish_batch(events)
    rt.worker(broker)
    wait_until(lambda: rt.bus.dead_letters("throws-batch"), DEADLINE_S, "a dead letter")
    drain(rt, broker, "throws-batch", ["pay"])  # no 10 s backoff: never retried
    (dl,) = rt.bus.dead_letters("throws-batch")
    assert (dl.event_id, dl.reason, dl.error_type) == (events[0].id, "not_retryable", "Declined")
    assert sorted(calls.items()) == [[0], [0, 1], [0, 1, 2, 3], [1], [2, 3]]


def test_a_graceful_stop_hands_back_gathered_entries(rt: Runtime) -> None:
    first, second = Recorder(), Recorder()
    rt.bus.subscribe("handback", topics=["tick"], batch_size=10,
                     batch_wait_ms=60_000)(record(first))
    broker = rt.broker()
    worker = rt.worker(broker)
    rt.bus.publish_batch([ev("tick.tocked", i) for i in range(4)])
    stream = rt.bus.keys.stream("tick")
    wait_until(lambda: rt.client.xpending(stream, "handback")["pending"] == 4, DEADLINE_S,
               "four entries gathered (read, pending, not yet a batch)")
    rt.stop(worker)  # graceful: the gathered entries go back, undelivered
    assert first.items() == []
    bus2 = rt.new_bus()  # another worker of the same subscription
    bus2.subscribe("handback", topics=["tick"], batch_size=10, batch_wait_ms=50)(record(second))
    broker2 = rt.broker(bus2)
    rt.worker(broker2)
    wait_until(lambda: len(flat(second)) == 4, DEADLINE_S, "the handed-back entries")
    drain(rt, broker2, "handback", ["tick"])
    assert flat(second) == [0, 1, 2, 3] and first.items() == []


@pytest.mark.redis
def test_a_settle_redis_refuses_leaves_the_batch_pending(
    redis_servers: RedisServers, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's user may not XADD: neither the split parts nor the dead letter can be
    written, so nothing is acked and the entries come back after the lease; once XADD is
    allowed the poison event is dead-lettered and the other one was handled."""
    caplog.set_level(logging.WARNING)
    server = redis_servers.start()
    admin = server.client()
    worker_client = server.user_client("worker", denied=("xadd",))
    rt = Runtime(EventBus(worker_client, namespace=ns), "real")
    runs, handled = Recorder(), Recorder()
    try:
        @rt.bus.subscribe("doomed-batch", topics=["cart"], batch_size=2, batch_wait_ms=50,
                          max_retries=0)
        def doomed(events: list[Event]) -> None:
            runs.add([e.data["n"] for e in events])
            if any(e.data["n"] == 1 for e in events):
                raise RuntimeError("always")
            handled.add(events[0].data["n"])

        broker = rt.broker(max_deliveries=50)
        rt.worker(broker)
        sids = EventBus(admin, namespace=ns).publish_batch(
            [ev("cart.created", 0), ev("cart.created", 1)])
        stream = rt.bus.keys.stream("cart")
        wait_until(lambda: len(runs) >= 3, DEADLINE_S, "redelivery after a refused settle")
        assert dlq_len(admin, rt.bus, "doomed-batch") == 0
        assert admin.xpending(stream, "doomed-batch")["pending"] >= 1
        assert any("Redis refused to settle" in r.getMessage() for r in caplog.records)
        server.allow("worker", "xadd")
        wait_until(lambda: dlq_len(admin, rt.bus, "doomed-batch") == 1, DEADLINE_S,
                   "the dead letter")
        wait_until(lambda: admin.xpending(stream, "doomed-batch")["pending"] == 0, DEADLINE_S,
                   "acked")
    finally:
        rt.stop()
        worker_client.close()
    (dl,) = EventBus(admin, namespace=ns).dead_letters("doomed-batch")
    admin.close()
    assert (dl.source_id, dl.reason) == (sids[1], "retries_exhausted")
    assert handled.items() == [0]  # the other one, once


def test_a_targeted_replay_is_delivered_in_batches(rt: Runtime) -> None:
    sids = rt.bus.publish_batch([ev("ledger.posted", i) for i in range(25)])
    got = Recorder()

    @rt.bus.subscribe("replay-batches", topics=["ledger"], batch_size=10, batch_wait_ms=200)
    def audit(events: list[Event], deliveries: list[Delivery]) -> None:
        got.add([(e.data["n"], d.replay, d.entry_id) for e, d in zip(events, deliveries,
                                                                      strict=True)])

    broker = rt.broker()
    target, topics = choose_target(rt.bus, to_sub="replay-batches")
    assert replay(rt.bus, target, topics=topics).delivered == 25  # before the worker runs
    rt.worker(broker)
    wait_until(lambda: sum(len(b) for b in got.items()) == 25, DEADLINE_S, "the replay")
    drain(rt, broker, "replay-batches", ["ledger"])
    assert sorted(len(b) for b in got.items()) == [5, 10, 10]  # gathered like topic entries
    assert sorted(item for b in got.items() for item in b) == [
        (i, True, sids[i]) for i in range(25)]
    assert rt.client.xlen(rt.bus.keys.queue("replay-batches")) == 0  # acked and deleted
