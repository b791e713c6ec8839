"""AsyncEventBus on fakeredis: the same behaviour as EventBus, on redis.asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import pytest
import redis
import redis.exceptions as rex
from support import free_port

from chi_redis import (
    AsyncEventBus,
    Event,
    EventBus,
    PayloadTooLargeError,
    PublishError,
    RedisUnavailableError,
    RetryPolicy,
)


def run(
    fn: Callable[[AsyncEventBus], Awaitable[Any]],
    server: fakeredis.FakeServer,
    ns: str,
    **options: Any,
) -> Any:
    async def main() -> Any:
        bus = AsyncEventBus(
            fakeredis.FakeAsyncRedis(server=server, version=(7, 0)), namespace=ns, **options
        )
        try:
            return await fn(bus)
        finally:
            await bus.close()

    return asyncio.run(main())


def ev(i: int, type_: str = "user.signed_up") -> Event:
    return Event(type=type_, data={"i": i})


def test_publish_writes_what_the_sync_store_reads(
    fake_server: fakeredis.FakeServer, fake_client: redis.Redis, ns: str
) -> None:
    event = ev(1)
    sid = run(lambda bus: bus.publish(event), fake_server, ns)
    sync = EventBus(fake_client, namespace=ns)
    assert sync.store.load(event.id) == event
    assert sync.store.locate(event.id) == ("user", sid)
    # Found by event time, through the stream or (when late for its entry) the index.
    assert sync.store.load_by_time_range(event.timestamp, event.timestamp) == [event]


def test_idempotent_publish(
    fake_server: fakeredis.FakeServer, fake_client: redis.Redis, ns: str
) -> None:
    event = ev(1)

    async def publish_twice(bus: AsyncEventBus) -> list[str]:
        a = await bus.publish(event)
        b = await bus.publish(event)
        c = await bus.publish(ev(2), idempotency_key="k")
        d = await bus.publish(ev(3), idempotency_key="k")
        return [a, b, c, d]

    a, b, c, d = run(publish_twice, fake_server, ns)
    assert a == b and c == d and a != c
    assert fake_client.xlen(f"{ns}:{{user}}:stream") == 2


def test_publish_batch_preserves_order(
    fake_server: fakeredis.FakeServer, fake_client: redis.Redis, ns: str
) -> None:
    events = [ev(i, "user.signed_up" if i % 3 else "order.placed") for i in range(700)]
    ids = run(lambda bus: bus.publish_batch(events, chunk_size=50), fake_server, ns)
    assert len(ids) == 700
    sync = EventBus(fake_client, namespace=ns)
    for topic in ("user", "order"):
        expected = [e for e in events if e.topic == topic]
        assert sync.store.load_by_topic(topic, limit=1000) == expected


def test_publish_batch_partial_failure_reports_written_and_failed(
    fake_server: fakeredis.FakeServer, ns: str
) -> None:
    events = [ev(i) for i in range(250)]

    async def failing_second_round_trip(bus: AsyncEventBus) -> PublishError:
        original = bus.writer.send_pipelined
        calls = {"n": 0}

        async def flaky(group: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:
                raise rex.ConnectionError("connection reset by peer")
            return await original(group)

        bus.writer.send_pipelined = flaky  # type: ignore[method-assign]
        with pytest.raises(PublishError) as info:
            await bus.publish_batch(events, chunk_size=10)
        return info.value

    err = run(failing_second_round_trip, fake_server, ns, retry=RetryPolicy(attempts=1))
    assert sorted(err.written) == list(range(200))
    assert err.failed == list(range(200, 250))
    assert isinstance(err.cause, RedisUnavailableError)


def test_oversize_event_is_rejected_before_redis(
    fake_server: fakeredis.FakeServer, fake_client: redis.Redis, ns: str
) -> None:
    async def publish_big(bus: AsyncEventBus) -> None:
        with pytest.raises(PayloadTooLargeError):
            await bus.publish(Event(type="user.signed_up", data="x" * 5000))
        with pytest.raises(PayloadTooLargeError):
            await bus.publish_batch([ev(1), Event(type="user.signed_up", data="x" * 5000)])

    run(publish_big, fake_server, ns, max_event_bytes=4096)
    assert list(fake_client.scan_iter(match=f"{ns}:*")) == []


def test_unreachable_redis_is_redis_unavailable(ns: str) -> None:
    async def main() -> None:
        bus = AsyncEventBus.from_url(
            f"redis://:secret-pw@127.0.0.1:{free_port()}/0",
            namespace=ns,
            retry=RetryPolicy(attempts=2, base_ms=1),
        )
        with pytest.raises(RedisUnavailableError) as info:
            await bus.publish(ev(1))
        assert "secret-pw" not in str(info.value) and "secret-pw" not in repr(bus)
        with pytest.raises(PublishError) as batch:
            await bus.publish_batch([ev(2), ev(3)])
        assert batch.value.failed == [0, 1]
        await bus.close()

    asyncio.run(main())


def test_from_url_takes_bus_options() -> None:
    bus = AsyncEventBus.from_url(
        "redis://127.0.0.1:1/0",
        namespace="n1",
        encoding="json",
        max_event_bytes=10,
        idempotency_ttl_ms=5,
        retry=RetryPolicy(attempts=7),
    )
    assert (bus.namespace, bus.codec.encoding, bus.codec.max_event_bytes) == ("n1", "json", 10)
    assert bus.idempotency_ttl_ms == 5 and bus.retry.attempts == 7
    assert bus.keys.stream("user") == "n1:{user}:stream"
    asyncio.run(bus.close())
