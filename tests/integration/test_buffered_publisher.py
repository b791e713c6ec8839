"""AsyncEventBus and BufferedPublisher on the real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from support import await_until, free_port, redis_url

from chi_redis import (
    AsyncEventBus,
    BufferedPublisher,
    BufferFullError,
    ChiError,
    Event,
    EventBus,
    PayloadTooLargeError,
    PublishError,
    RedisUnavailableError,
    RetryPolicy,
    ValidationError,
)

pytestmark = pytest.mark.redis


def ev(i: int, type_: str = "metric.sampled") -> Event:
    return Event(type=type_, data={"i": i})


def counter(name: str, ns: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels or {"namespace": ns}) or 0.0


def run(
    ns: str, fn: Callable[[AsyncEventBus], Awaitable[Any]], url: str = "", **options: Any
) -> Any:
    async def main() -> Any:
        bus = AsyncEventBus.from_url(url or redis_url(), namespace=ns, **options)
        try:
            return await fn(bus)
        finally:
            await bus.close()

    return asyncio.run(main())


class Gate:
    """Holds every publish_batch of a bus until opened."""

    def __init__(self, bus: AsyncEventBus) -> None:
        self.open = asyncio.Event()
        self.waiting = 0
        original = bus.publish_batch

        async def gated(events: Any, **kw: Any) -> list[str]:
            self.waiting += 1
            await self.open.wait()
            return await original(events, **kw)

        bus.publish_batch = gated  # type: ignore[method-assign]


def test_async_bus_publishes_to_the_same_log(real_client: redis.Redis, ns: str) -> None:
    events = [ev(i, "user.signed_up") for i in range(300)]

    async def publish(bus: AsyncEventBus) -> tuple[str, list[str]]:
        one = await bus.publish(ev(-1, "user.signed_up"), idempotency_key="k1")
        again = await bus.publish(ev(-2, "user.signed_up"), idempotency_key="k1")
        assert again == one
        return one, await bus.publish_batch(events, chunk_size=64)

    one, ids = run(ns, publish)
    sync = EventBus(real_client, namespace=ns)
    stored = sync.store.load_by_topic("user", limit=1000)
    assert len(stored) == 301
    assert stored[1:] == events
    assert [sid.decode() for sid, _ in real_client.xrange(sync.keys.stream("user"))] == [one, *ids]


def test_flush_writes_everything_queued_in_order(real_client: redis.Redis, ns: str) -> None:
    events = [ev(i) for i in range(2500)]
    # Counted by topic in the write path (publish/writer.py), whatever publishes.
    before = counter("chi_events_published_total", ns, topic="metric")

    async def publish(bus: AsyncEventBus) -> BufferedPublisher:
        publisher = BufferedPublisher(bus, batch_size=200, max_buffer=1000)
        for e in events:
            await publisher.publish(e)
        await publisher.flush()
        assert publisher.pending == 0
        await publisher.flush()  # nothing queued: returns at once
        await publisher.close()
        return publisher

    publisher = run(ns, publish)
    assert publisher.published_count == 2500 and publisher.failed_count == 0
    assert counter("chi_events_published_total", ns, topic="metric") - before == 2500
    sync = EventBus(real_client, namespace=ns)
    assert sync.store.load_by_topic("metric", limit=5000) == events


def test_raise_policy_raises_at_once_when_the_buffer_is_full(
    real_client: redis.Redis, ns: str
) -> None:
    async def fill(bus: AsyncEventBus) -> None:
        gate = Gate(bus)
        publisher = BufferedPublisher(bus, max_buffer=10, batch_size=5, on_full="raise")
        accepted = 0
        with pytest.raises(BufferFullError):
            for i in range(100):
                await publisher.publish(ev(i))
                accepted += 1
        assert 10 <= accepted <= 15  # the buffer, plus at most one batch in the writer's hands
        gate.open.set()
        await publisher.close()
        assert publisher.published_count == accepted

    run(ns, fill)
    assert real_client.xlen(f"{ns}:{{metric}}:stream") in range(10, 16)


def test_block_policy_waits_for_space_then_times_out(
    real_client: redis.Redis, ns: str
) -> None:
    async def fill(bus: AsyncEventBus) -> int:
        gate = Gate(bus)
        publisher = BufferedPublisher(bus, max_buffer=4, batch_size=4, block_timeout_s=0.2)
        accepted = 0
        with pytest.raises(BufferFullError) as info:
            for i in range(100):
                await publisher.publish(ev(i))
                accepted += 1
        assert "still full" in str(info.value)
        assert 4 <= accepted <= 8
        # A patient caller is let in as soon as the writer makes room.
        patient = BufferedPublisher(bus, max_buffer=1, batch_size=1, block_timeout_s=60)
        await patient.publish(ev(1000))
        await await_until(lambda: gate.waiting >= 2, message="the writer to hold a batch")
        await patient.publish(ev(1001))
        blocked = asyncio.create_task(patient.publish(ev(1002)))
        await asyncio.sleep(0.05)
        assert not blocked.done()  # the gate is closed: it cannot have got in
        gate.open.set()
        await blocked
        await publisher.close()
        await patient.close()
        return accepted + 3

    total = run(ns, fill)
    assert real_client.xlen(f"{ns}:{{metric}}:stream") == total


def test_close_drains_the_buffer_and_refuses_new_events(
    real_client: redis.Redis, ns: str
) -> None:
    events = [ev(i) for i in range(3000)]

    async def publish(bus: AsyncEventBus) -> None:
        async with BufferedPublisher(bus, batch_size=300, flush_interval_ms=50) as publisher:
            for e in events:
                await publisher.publish(e)
        with pytest.raises(ChiError):
            await publisher.publish(ev(-1))
        await publisher.close()  # idempotent
        assert publisher.published_count == 3000

    run(ns, publish)
    sync = EventBus(real_client, namespace=ns)
    assert sync.store.load_by_topic("metric", limit=5000) == events


def test_unreachable_redis_failures_are_reported_not_dropped(ns: str) -> None:
    reported: list[tuple[list[Event], BaseException]] = []
    events = [ev(i) for i in range(120)]
    before = counter("chi_publish_failed_total", ns)

    async def publish(bus: AsyncEventBus) -> BufferedPublisher:
        publisher = BufferedPublisher(
            bus, batch_size=50, on_error=lambda evs, exc: reported.append((evs, exc))
        )
        for e in events:
            await publisher.publish(e)
        await publisher.close()
        return publisher

    publisher = run(
        ns,
        publish,
        url=f"redis://127.0.0.1:{free_port()}/0",
        retry=RetryPolicy(attempts=2, base_ms=1),
    )
    assert [e for evs, _ in reported for e in evs] == events
    assert all(isinstance(exc, RedisUnavailableError) for _, exc in reported)
    assert publisher.failed_count == 120 and publisher.published_count == 0
    assert counter("chi_publish_failed_total", ns) - before == 120


def test_partly_written_batch_reports_only_the_unwritten_events(
    real_client: redis.Redis, ns: str
) -> None:
    reported: list[Event] = []

    async def publish(bus: AsyncEventBus) -> BufferedPublisher:
        original = bus.publish_batch
        calls = {"n": 0}

        async def half(events: Any, **kw: Any) -> list[str]:
            calls["n"] += 1
            if calls["n"] == 1:
                ids = await original(events[:4], **kw)
                raise PublishError(
                    "half",
                    written=dict(enumerate(ids)),
                    failed=list(range(4, len(events))),
                    cause=RedisUnavailableError("reset"),
                )
            return await original(events, **kw)

        bus.publish_batch = half  # type: ignore[method-assign]

        async def on_error(evs: list[Event], exc: BaseException) -> None:  # async callbacks too
            reported.extend(evs)

        publisher = BufferedPublisher(bus, batch_size=10, on_error=on_error)
        for i in range(10):
            await publisher.publish(ev(i))
        await publisher.flush()
        for i in range(10, 20):
            await publisher.publish(ev(i))
        await publisher.close()
        return publisher

    publisher = run(ns, publish)
    assert [e.data["i"] for e in reported] == list(range(4, 10))
    assert publisher.failed_count == 6 and publisher.published_count == 14
    assert real_client.xlen(f"{ns}:{{metric}}:stream") == 14


def test_a_failing_callback_does_not_stop_the_publisher(ns: str) -> None:
    async def publish(bus: AsyncEventBus) -> BufferedPublisher:
        def broken(evs: list[Event], exc: BaseException) -> None:
            raise RuntimeError("callback bug")

        publisher = BufferedPublisher(bus, batch_size=5, on_error=broken)
        for i in range(20):
            await publisher.publish(ev(i))
        await publisher.flush()
        assert publisher.failed_count == 20
        await publisher.close()
        return publisher

    run(ns, publish, url=f"redis://127.0.0.1:{free_port()}/0", retry=RetryPolicy(attempts=1))


def test_invalid_events_are_rejected_by_publish_and_never_queued(ns: str) -> None:
    async def publish(bus: AsyncEventBus) -> None:
        publisher = BufferedPublisher(bus)
        with pytest.raises(PayloadTooLargeError):
            await publisher.publish(Event(type="metric.sampled", data="x" * 2000))
        with pytest.raises(ValidationError):
            await publisher.publish({"type": "metric.sampled"})  # type: ignore[arg-type]
        assert publisher.pending == 0
        await publisher.close()

    run(ns, publish, max_event_bytes=1000)


@pytest.mark.parametrize(
    "options",
    [{"max_buffer": 0}, {"batch_size": 0}, {"on_full": "drop"}, {"block_timeout_s": -1}],
)
def test_bad_options_are_rejected(options: dict[str, Any]) -> None:
    bus = AsyncEventBus.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(ValidationError):
        BufferedPublisher(bus, **options)
    asyncio.run(bus.close())
