"""Dramatiq broker behaviours, rewritten for StreamsBroker (after dramatiq's own RedisBroker
tests): retries with backoff, delays in due order, dead letters after retries, ``throws``,
unknown actors, requeue on shutdown, join, flush, and acks/nacks surviving connection errors.
Each runs on fakeredis (7.0 + Lua) and on the real server."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
import redis
import redis.exceptions as rex
from dramatiq.errors import QueueJoinTimeout
from support import Recorder, Runtime, dlq_len, drained, group_info, stays, wait_until

from chi_redis import Event
from chi_redis.runtime.boot import FreezeHeapAtBoot
from chi_redis.runtime.consumer import StreamsConsumer
from chi_redis.runtime.subscriptions import Delivery


def ev(type_: str = "cart.created", **data: Any) -> Event:
    return Event(type=type_, data=data)


# retries ---------------------------------------------------------------------------------------
def test_retry_with_backoff_then_success(rt: Runtime) -> None:
    calls = Recorder()

    @rt.bus.subscribe("flaky", types=["cart.created"], max_retries=3, min_backoff_ms=10,
                      max_backoff_ms=40)
    def flaky(event: Event, delivery: Delivery) -> None:
        calls.add(delivery.attempt)
        if delivery.attempt < 3:
            raise RuntimeError("not yet")

    broker = rt.broker()
    rt.worker(broker)
    rt.publish(ev(n=1))
    broker.join("flaky", timeout=30_000)
    assert calls.items() == [1, 2, 3]
    assert dlq_len(rt.client, rt.bus, "flaky") == 0
    assert drained(rt.client, rt.bus, "flaky", ["cart"])
    # the retry copies went through the private stream and were deleted after their ack
    assert rt.client.xlen(rt.bus.keys.queue("flaky")) == 0


def test_plain_actor_retries_on_the_same_broker(rt: Runtime) -> None:
    broker = rt.broker()
    attempts = Recorder()

    @dramatiq.actor(max_retries=3, min_backoff=10, max_backoff=20)
    def shaky(x: int) -> None:
        attempts.add(x)
        if len(attempts) < 2:
            raise ValueError("first try fails")

    assert shaky.broker is broker
    rt.worker(broker)
    shaky.send(7)
    broker.join("default", timeout=30_000)
    assert attempts.items() == [7, 7]
    assert dlq_len(rt.client, rt.bus, "default") == 0


# delays ------------------------------------------------------------------------------------------
def test_delayed_messages_come_out_in_due_order(rt: Runtime) -> None:
    broker = rt.broker()
    seen = Recorder()

    @dramatiq.actor
    def record(i: int) -> None:
        seen.add(i)

    rt.worker(broker, threads=1)
    delays = [900, 300, 0, 600, 150]  # due order: 2, 4, 1, 3, 0
    for i, d in enumerate(delays):
        record.send_with_options(args=(i,), delay=d)
    broker.join("default", timeout=30_000)
    assert seen.items() == [2, 4, 1, 3, 0]
    assert rt.client.zcard(rt.bus.keys.delayed("default")) == 0


def test_delay_is_not_eta(rt: Runtime) -> None:
    """Delayed messages wait in Redis (the sorted set), never in worker memory."""
    broker = rt.broker()

    @dramatiq.actor
    def later() -> None:
        pass

    later.send_with_options(delay=60_000)
    (body,) = rt.client.zrange(rt.bus.keys.delayed("default"), 0, -1)
    from chi_redis.runtime.encoder import decode_message

    assert isinstance(body, bytes)
    assert "eta" not in decode_message(body).options
    broker.flush("default")


# dead letters ------------------------------------------------------------------------------------
def test_dead_letter_after_retries_with_provenance(rt: Runtime) -> None:
    calls = Recorder()

    @rt.bus.subscribe("poison", types=["cart.created"], max_retries=2, min_backoff_ms=10,
                      max_backoff_ms=30)
    def poison(event: Event) -> None:
        calls.add(event.id)
        raise ValueError("cannot charge card, api_key=sk-live-123 password=hunter2")

    broker = rt.broker()
    rt.worker(broker)
    event = ev(n=1)
    (sid,) = rt.publish(event)
    wait_until(lambda: dlq_len(rt.client, rt.bus, "poison") == 1, message="dead letter")
    broker.join("poison", timeout=30_000)
    assert len(calls) == 3  # 1 + max_retries
    (dl,) = rt.bus.dead_letters("poison")
    assert dl.reason == "retries_exhausted"
    assert dl.error_type == "ValueError"
    assert "cannot charge card" in dl.error
    assert "sk-live-123" not in dl.error and "hunter2" not in dl.error
    assert "ValueError" in dl.traceback and "hunter2" not in dl.traceback
    assert "sk-live-123" not in dl.traceback
    assert dl.event_id == event.id and dl.type == "cart.created" and dl.topic == "cart"
    assert dl.source_stream == rt.bus.keys.stream("cart") and dl.source_id == sid
    assert dl.attempts == 3 and dl.deliveries >= 1
    assert 0 < dl.first_failure_ms <= dl.last_failure_ms
    assert dl.kind == "event" and dl.body
    assert drained(rt.client, rt.bus, "poison", ["cart"])
    assert stays(lambda: len(calls) == 3, 0.5)


def test_throws_goes_straight_to_the_dead_letters(rt: Runtime) -> None:
    calls = Recorder()

    class Rejected(Exception):
        pass

    @rt.bus.subscribe("strict", types=["cart.created"], max_retries=5, throws=(Rejected,),
                      min_backoff_ms=10, max_backoff_ms=20)
    def strict(event: Event) -> None:
        calls.add(event.id)
        raise Rejected("invalid order")

    broker = rt.broker()
    rt.worker(broker)
    rt.publish(ev())
    wait_until(lambda: dlq_len(rt.client, rt.bus, "strict") == 1, message="dead letter")
    broker.join("strict", timeout=30_000)
    (dl,) = rt.bus.dead_letters("strict")
    assert len(calls) == 1
    assert dl.reason == "not_retryable" and dl.error_type == "Rejected" and dl.attempts == 1


def test_unknown_actor_is_dead_lettered_and_the_worker_goes_on(rt: Runtime) -> None:
    broker = rt.broker()
    done = Recorder()

    @dramatiq.actor
    def known(x: int) -> None:
        done.add(x)

    rt.worker(broker)
    broker.enqueue(dramatiq.Message(queue_name="default", actor_name="ghost", args=(1,),
                                    kwargs={}, options={}))
    known.send(2)
    wait_until(lambda: dlq_len(rt.client, rt.bus, "default") == 1, message="dead letter")
    wait_until(lambda: done.items() == [2], message="the known actor ran")
    broker.join("default", timeout=30_000)
    (dl,) = rt.bus.dead_letters("default")
    assert dl.reason == "unknown_actor" and dl.kind == "task" and dl.type == "ghost"
    assert dl.error_type == "ActorNotFound"


# shutdown ------------------------------------------------------------------------------------
def test_requeue_on_shutdown_hands_prefetched_entries_to_another_worker(rt: Runtime) -> None:
    """Worker A stops with entries prefetched; worker B gets them at once (the lease is a
    minute, so only the abandoned placeholder can explain a fast hand-over)."""
    started = Recorder()
    handled = Recorder()
    gate = threading.Event()

    def handler(worker: str) -> Any:
        def handle(event: Event) -> None:
            started.add((worker, event.data["n"]))
            if worker == "a":
                gate.wait(30)
            handled.add(event.data["n"])
        return handle

    rt.bus.subscribe("jobs", types=["cart.created"])(handler("a"))
    broker_a = rt.broker(lease_ms=60_000)
    worker_a = rt.worker(broker_a, threads=1)  # prefetch 2: one running, one waiting
    rt.publish(*(ev(n=i) for i in range(6)))
    wait_until(lambda: len(started) == 1 and len(broker_a.states["jobs"].inflight) == 2,
               message="A busy with one entry and holding another")

    bus_b = rt.new_bus()
    bus_b.subscribe("jobs", types=["cart.created"])(handler("b"))
    broker_b = rt.broker(bus_b, set_global=False, lease_ms=60_000)
    stopper = threading.Thread(target=rt.stop, args=(worker_a,))
    stopper.start()
    wait_until(lambda: not any(t.running for t in worker_a.workers),
               message="A's worker threads told to stop")
    gate.set()  # A finishes its running entry, hands back the prefetched one, stops
    stopper.join(30)
    assert not stopper.is_alive()
    pending = group_info(rt.client, rt.bus.keys.stream("cart"), "jobs")
    assert pending is not None
    rt.worker(broker_b, threads=2)
    wait_until(lambda: sorted(handled.items()) == list(range(6)), 20,
               message="every entry handled (well before the 60 s lease)")
    assert len(handled) == 6  # each once
    wait_until(lambda: drained(rt.client, rt.bus, "jobs", ["cart"]), message="drained")
    consumers = {c["name"]: c["pending"]
                 for c in rt.client.xinfo_consumers(rt.bus.keys.stream("cart"), "jobs")}
    assert consumers.get(b"chi-abandoned", 0) == 0


# join / flush --------------------------------------------------------------------------------
def test_join_waits_for_delayed_and_in_flight_work(rt: Runtime) -> None:
    broker = rt.broker()
    done = Recorder()
    gate = threading.Event()

    @dramatiq.actor
    def step(i: int) -> None:
        if i == 0:
            gate.wait(30)
        done.add(i)

    rt.worker(broker, threads=2)
    step.send(0)
    for i in range(1, 4):
        step.send_with_options(args=(i,), delay=100 * i)
    with pytest.raises(QueueJoinTimeout):
        broker.join("default", timeout=300)
    gate.set()
    broker.join("default", timeout=30_000)
    assert sorted(done.items()) == [0, 1, 2, 3]


def test_flush_drops_one_queue_and_flush_all_drops_everything(rt: Runtime) -> None:
    handled = Recorder()

    @rt.bus.subscribe("first", types=["cart.created"])
    def first(event: Event) -> None:
        handled.add(("first", event.data["n"]))

    @rt.bus.subscribe("second", types=["cart.created"])
    def second(event: Event) -> None:
        handled.add(("second", event.data["n"]))

    broker = rt.broker()

    @dramatiq.actor
    def task(x: int) -> None:
        handled.add(("task", x))

    rt.publish(*(ev(n=i) for i in range(3)))
    task.send(1)
    task.send_with_options(args=(2,), delay=50)
    assert not broker.is_idle("first") and not broker.is_idle("default")
    broker.flush("first")
    assert broker.is_idle("first") and not broker.is_idle("second")
    rt.worker(broker)
    broker.join("second", timeout=30_000)
    broker.join("default", timeout=30_000)
    assert sorted(handled.items()) == [
        ("second", 0), ("second", 1), ("second", 2), ("task", 1), ("task", 2),
    ]
    rt.stop()
    handled.calls.clear()
    rt.publish(ev(n=9))
    task.send(3)
    task.send_with_options(args=(4,), delay=50)
    broker.flush_all()
    assert all(broker.is_idle(q) for q in ("first", "second", "default"))
    rt.worker(broker)
    assert stays(lambda: not handled.items(), 1.0)


# connection errors ------------------------------------------------------------------------
class Flaky:
    """Makes the next command (direct or in a pipeline) for which ``match(args)`` holds raise
    ConnectionError, once: either before it is sent or after it ran (a lost reply)."""

    def __init__(self, client: redis.Redis, match: Callable[[tuple[Any, ...]], bool],
                 after: bool) -> None:
        self.client = client
        self.match = match
        self.after = after
        self.fired = threading.Event()
        self._lock = threading.Lock()
        orig_pipeline: Any = client.pipeline
        orig_execute_command: Any = client.execute_command

        def fire(cmds: list[tuple[Any, ...]]) -> bool:
            with self._lock:
                if self.fired.is_set() or not any(self.match(c) for c in cmds):
                    return False
                self.fired.set()
                return True

        def execute_command(*args: Any, **options: Any) -> Any:
            if fire([args]):
                if self.after:
                    orig_execute_command(*args, **options)
                raise rex.ConnectionError("injected: connection reset by peer")
            return orig_execute_command(*args, **options)

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = orig_pipeline(*args, **kwargs)
            orig_execute = pipe.execute

            def execute(*a: Any, **k: Any) -> Any:
                if fire([c[0] for c in pipe.command_stack]):
                    if self.after:
                        orig_execute(*a, **k)
                    pipe.reset()
                    raise rex.ConnectionError("injected: connection reset by peer")
                return orig_execute(*a, **k)

            pipe.execute = execute
            return pipe

        client.pipeline = pipeline  # type: ignore[method-assign]
        client.execute_command = execute_command  # type: ignore[method-assign]

    def undo(self) -> None:
        del self.client.pipeline
        del self.client.execute_command

    def __enter__(self) -> Flaky:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


def _cmd(args: tuple[Any, ...]) -> str:
    return str(args[0]).upper() if args else ""


@pytest.mark.parametrize("after", [False, True], ids=["before-send", "lost-reply"])
def test_buffered_acks_survive_a_connection_error(rt: Runtime, after: bool) -> None:
    """The pipeline that carries acks (and the next XREADGROUP) fails once: the acks are
    kept and sent again, and entries read in a lost reply are reclaimed after the lease."""
    handled = Recorder()

    @rt.bus.subscribe("acks", types=["cart.created"])
    def acks(event: Event) -> None:
        handled.add(event.data["n"])

    broker = rt.broker()
    rt.worker(broker)
    rt.publish(*(ev(n=i) for i in range(5)))
    wait_until(lambda: len(handled) == 5, message="first batch")
    with Flaky(rt.client, lambda c: _cmd(c) == "XACK", after) as flaky:
        rt.publish(*(ev(n=i) for i in range(5, 10)))
        wait_until(flaky.fired.is_set, message="the injected error")
        wait_until(lambda: drained(rt.client, rt.bus, "acks", ["cart"]), 30,
                   message="everything acked")
    counts = handled.counts()
    assert sorted(counts) == list(range(10))  # nothing lost
    assert all(c == 1 for c in counts.values())  # the retried acks duplicated nothing


@pytest.mark.parametrize("after", [False, True], ids=["before-send", "lost-reply"])
def test_nack_is_retried_after_a_connection_error(rt: Runtime, after: bool) -> None:
    """Dead-lettering (the nack) fails once: Dramatiq retries it; exactly one dead letter."""

    @rt.bus.subscribe("rejects", types=["cart.created"], max_retries=0)
    def rejects(event: Event) -> None:
        raise KeyError("no such customer")

    broker = rt.broker()
    rt.worker(broker)
    # whatever writes the dead letter (a script, a MULTI) mentions the dead-letter stream
    with Flaky(rt.client, lambda c: any(isinstance(a, str) and a.endswith(":dlq") for a in c),
               after) as flaky:
        rt.publish(ev(n=1))
        wait_until(flaky.fired.is_set, message="the injected error")
        broker.join("rejects", timeout=30_000)  # in-flight until the nack went through
    assert drained(rt.client, rt.bus, "rejects", ["cart"])
    assert stays(lambda: dlq_len(rt.client, rt.bus, "rejects") == 1, 0.5)
    (dl,) = rt.bus.dead_letters("rejects")
    assert dl.reason == "retries_exhausted" and dl.error_type == "KeyError"


def test_retry_copy_not_written_leaves_the_entry_for_reclaim(rt: Runtime) -> None:
    """Retries cannot write the delayed copy (connection error): the original entry is not
    acked, so it is reclaimed after the lease and nothing is lost."""
    calls = Recorder()

    @rt.bus.subscribe("fragile", types=["cart.created"], max_retries=3, min_backoff_ms=10,
                      max_backoff_ms=20)
    def fragile(event: Event, delivery: Delivery) -> None:
        calls.add(delivery.attempt)
        if len(calls) == 1:
            raise RuntimeError("transient")

    broker = rt.broker()
    rt.worker(broker)
    # the delayed copy goes to the sorted set (a script call naming it, or a ZADD)
    delayed = rt.bus.keys.delayed("fragile")

    def writes_delayed(c: tuple[Any, ...]) -> bool:
        if _cmd(c) in ("EVALSHA", "EVAL"):  # the delay script has one key; promote has two
            return len(c) > 3 and c[2] == 1 and c[3] == delayed
        return _cmd(c) == "ZADD" and c[1] == delayed

    with Flaky(rt.client, writes_delayed, after=False) as flaky:
        rt.publish(ev(n=1))
        wait_until(flaky.fired.is_set, message="the injected error")
        wait_until(lambda: len(calls) == 2, 30, message="redelivery after the lease")
        wait_until(lambda: drained(rt.client, rt.bus, "fragile", ["cart"]), message="drained")
    assert calls.items() == [1, 1]  # the second run is a redelivery of the original entry
    assert dlq_len(rt.client, rt.bus, "fragile") == 0


# prefetch ----------------------------------------------------------------------------------
def test_prefetch_window_widens_for_fast_handlers_only(rt: Runtime) -> None:
    """Fast handlers: the consumer may hold more than Dramatiq's prefetch (fewer round trips
    per message); slow ones keep it (no worker hoards slow work); a configured prefetch is
    never changed."""

    @rt.bus.subscribe("fast", types=["cart.created"])
    def fast(event: Event) -> None:
        pass

    @rt.bus.subscribe("slowish", types=["cart.created"])
    def slowish(event: Event) -> None:
        time.sleep(0.03)

    broker = rt.broker()
    worker = rt.worker(broker, threads=2)  # Dramatiq's prefetch: 2 per thread
    rt.bus.publish_batch([ev(n=i) for i in range(20)])
    broker.join("fast", timeout=30_000)
    broker.join("slowish", timeout=30_000)
    fast_consumer = worker.consumers["fast"].consumer
    slow_consumer = worker.consumers["slowish"].consumer
    assert isinstance(fast_consumer, StreamsConsumer)
    assert isinstance(slow_consumer, StreamsConsumer)
    assert fast_consumer.prefetch == slow_consumer.prefetch == 4
    assert 4 < fast_consumer._window() <= broker.options.max_prefetch
    assert slow_consumer._window() == 4
    rt.stop()

    pinned = rt.broker(rt.new_bus(), set_global=False, prefetch=3)
    pinned.states["fast"].observe_run(0.0001)
    consumer = pinned.consume("fast", prefetch=4)
    assert consumer.prefetch == 3 and consumer._window() == 3



# ack flushing ------------------------------------------------------------------------------
def test_acks_are_flushed_while_the_consumer_waits_for_new_entries(rt: Runtime) -> None:
    """Acks are buffered and sent with the next read: while an entry is in flight, that read
    blocks about one handler run, not ``block_ms``, so an entry that finished on an idle
    queue is acked at once instead of after the long BLOCK (docs/design.md §5.2)."""

    @rt.bus.subscribe("prompt", types=["cart.created"])
    def prompt(event: Event) -> None:
        pass

    long_ms = 30_000  # every bound on the BLOCK: block_ms, the Worker's timeout, maintenance
    broker = rt.broker(block_ms=long_ms, lease_ms=20 * long_ms, reclaim_interval_ms=long_ms)
    consumer = broker.consume("prompt", prefetch=4, timeout=long_ms)
    rt.publish(ev(n=1))
    first = None
    deadline = time.monotonic() + 30
    while first is None and time.monotonic() < deadline:
        first = next(consumer)  # the entry is there: this read does not block long
    assert first is not None
    stream = rt.bus.keys.stream("cart")
    acked = threading.Event()

    def watch() -> None:
        """Wait (10 s at most) for the entry to be acked, then wake the consumer's read."""
        time.sleep(0.2)
        consumer.ack(first)  # the handler finished while the consumer is in its next read
        until = time.monotonic() + 10
        while time.monotonic() < until and not acked.is_set():
            info = group_info(rt.client, stream, "prompt")
            if info is not None and info["pending"] == 0:
                acked.set()
            time.sleep(0.01)
        rt.publish(ev(n=2))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    woken = None
    deadline = time.monotonic() + 60
    while woken is None and time.monotonic() < deadline:
        woken = next(consumer)
    watcher.join(30)
    assert acked.is_set(), "the ack waited for the long BLOCK to end"
    assert woken is not None and woken.args[1]["data"]  # the wake-up entry was read
    consumer.ack(woken)
    consumer.close()


def test_worker_boot_freezes_the_heap_before_consuming(rt: Runtime) -> None:
    """FreezeHeapAtBoot (installed by chi_redis.worker): the Worker's boot collects and
    freezes what is alive, so later full collections do not walk the boot-time heap."""
    handled = Recorder()

    @rt.bus.subscribe("frozen", types=["cart.created"])
    def frozen(event: Event) -> None:
        handled.add(gc.get_freeze_count())

    broker = rt.broker()
    broker.add_middleware(FreezeHeapAtBoot())
    gc.unfreeze()
    try:
        rt.worker(broker)
        rt.publish(ev(n=1))
        wait_until(lambda: len(handled) == 1, message="handled")
        assert handled.items()[0] > 1000  # frozen before the first message ran
    finally:
        gc.unfreeze()
