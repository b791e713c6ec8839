"""Limits that size Redis commands cannot be set unbounded by accident (chi_redis/limits.py):
0, negative and absurd values of each are a ConfigError naming the setting, in code and in
the config file; the bounds themselves are accepted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from support import CommandCounter

from chi_redis import AsyncEventBus, BufferedPublisher, Codec, ConfigError, Event, EventBus
from chi_redis.config import load_config
from chi_redis.limits import MAX_CHUNK, MAX_COUNT, MAX_DLQ_LEN, MAX_EVENT_BYTES, MAX_TTL_MS
from chi_redis.ops.replay import ReplayOptions
from chi_redis.runtime.broker import BrokerOptions

ABSURD = 10**15


def _async_bus(**options: Any) -> AsyncEventBus:
    return AsyncEventBus.from_url("redis://127.0.0.1:1/0", **options)  # never connected


def _buffered(**options: Any) -> None:
    async def build() -> None:
        bus = _async_bus()
        try:
            BufferedPublisher(bus, **options)
        finally:
            await bus.close()

    asyncio.run(build())


# (setting, build with a value, highest accepted value)
Build = Callable[[Any, redis.Redis], Any]
SETTINGS: list[tuple[str, Build, int]] = [
    ("max_event_bytes", lambda v, c: Codec(max_event_bytes=v), MAX_EVENT_BYTES),
    ("max_event_bytes", lambda v, c: EventBus(c, max_event_bytes=v), MAX_EVENT_BYTES),
    ("max_event_bytes", lambda v, c: _async_bus(max_event_bytes=v), MAX_EVENT_BYTES),
    ("idempotency_ttl_ms", lambda v, c: EventBus(c, idempotency_ttl_ms=v), MAX_TTL_MS),
    ("idempotency_ttl_ms", lambda v, c: _async_bus(idempotency_ttl_ms=v), MAX_TTL_MS),
    ("min_replicas", lambda v, c: EventBus(c, acks="replicas", min_replicas=v), 100),
    ("ack_timeout_ms", lambda v, c: EventBus(c, acks="replicas", ack_timeout_ms=v), 60_000),
    ("ack_timeout_ms", lambda v, c: _async_bus(acks="replicas", ack_timeout_ms=v), 60_000),
    ("batch_size", lambda v, c: _buffered(batch_size=v), MAX_CHUNK),
    ("max_buffer", lambda v, c: _buffered(max_buffer=v), 10_000_000),
    ("dedupe_ttl_ms", lambda v, c: EventBus(c).subscribe("s", dedupe=True, dedupe_ttl_ms=v),
     MAX_TTL_MS),
    ("batch_size", lambda v, c: ReplayOptions(batch_size=v).validate(), MAX_COUNT),
    ("block_ms", lambda v, c: BrokerOptions(block_ms=v), 3_600_000),
    ("prefetch", lambda v, c: BrokerOptions(prefetch=v), MAX_COUNT),
    ("max_prefetch", lambda v, c: BrokerOptions(max_prefetch=v), MAX_COUNT),
    ("dlq_maxlen", lambda v, c: BrokerOptions(dlq_maxlen=v), MAX_DLQ_LEN),
    ("lease_ms", lambda v, c: BrokerOptions(lease_ms=v), 7 * 24 * 3600 * 1000),
    ("reclaim_interval_ms", lambda v, c: BrokerOptions(reclaim_interval_ms=v), 24 * 3600 * 1000),
    ("max_deliveries", lambda v, c: BrokerOptions(max_deliveries=v), 1_000_000),
    ("registry_refresh_ms", lambda v, c: BrokerOptions(registry_refresh_ms=v), 24 * 3600 * 1000),
]
IDS = [f"{i}-{name}" for i, (name, _, _) in enumerate(SETTINGS)]


BAD = [0, -1, "absurd", 1.5, True, None]
# prefetch=None is its documented default (the Worker's choice), not a bad value.
BAD_CASES = [pytest.param(*setting, bad, id=f"{sid}-{bad}")
             for setting, sid in zip(SETTINGS, IDS, strict=True) for bad in BAD
             if not (setting[0] == "prefetch" and bad is None)]


@pytest.mark.parametrize(("name", "build", "hi", "bad"), BAD_CASES)
def test_zero_negative_or_absurd_setting_is_a_config_error(
    name: str, build: Build, hi: int, bad: Any, fake_client: redis.Redis
) -> None:
    value = hi + 1 if bad == "absurd" else bad
    with pytest.raises(ConfigError) as info:
        build(value, fake_client)
    assert info.value.field == name
    assert name in str(info.value) and f"to {hi}" in str(info.value)


@pytest.mark.parametrize(("name", "build", "hi"), SETTINGS, ids=IDS)
def test_the_bounds_themselves_are_accepted(
    name: str, build: Build, hi: int, fake_client: redis.Redis
) -> None:
    for value in (1, hi):
        build(value, fake_client)


@pytest.mark.parametrize("chunk_size", [0, -1, MAX_CHUNK + 1, 10**6])
def test_publish_batch_chunk_size_is_bounded_and_nothing_is_sent(
    chunk_size: int, fake_client: redis.Redis, ns: str
) -> None:
    bus = EventBus(fake_client, namespace=ns)
    with CommandCounter(fake_client) as counter, pytest.raises(ConfigError, match="chunk_size"):
        bus.publish_batch([Event(type="orders.created")], chunk_size=chunk_size)
    assert counter.count == 0
    assert bus.publish_batch([Event(type="orders.created")], chunk_size=MAX_CHUNK)


@pytest.mark.parametrize("count", [0, -1, MAX_COUNT + 1])
def test_dead_letter_page_size_is_bounded_and_nothing_is_sent(
    count: int, fake_client: redis.Redis, ns: str
) -> None:
    bus = EventBus(fake_client, namespace=ns)
    with CommandCounter(fake_client) as counter, pytest.raises(ConfigError, match="count"):
        bus.dead_letters("mail", count=count)
    assert counter.count == 0
    assert bus.dead_letters("mail", count=MAX_COUNT) == []


@pytest.mark.parametrize(("path", "value"), [
    ("bus.max_event_bytes", 0), ("bus.max_event_bytes", MAX_EVENT_BYTES + 1),
    ("bus.idempotency_ttl_ms", 0), ("bus.idempotency_ttl_ms", MAX_TTL_MS + 1),
    ("bus.min_replicas", 0), ("bus.min_replicas", 101), ("bus.ack_timeout_ms", 0),
    ("bus.ack_timeout_ms", 60_001),
    ("bus.buffer_size", 0), ("bus.buffer_size", ABSURD),
    ("worker.block_ms", 0), ("worker.block_ms", -5), ("worker.prefetch", 0),
    ("worker.prefetch", MAX_COUNT + 1), ("worker.max_prefetch", ABSURD),
    ("worker.lease_ms", 0), ("worker.max_deliveries", 0),
    ("replay.batch_size", 0), ("replay.batch_size", MAX_COUNT + 1),
    ("store.archive.batch_size", 0), ("outbox.batch_size", ABSURD),
])
def test_config_file_with_an_unbounded_setting_is_a_config_error(
    path: str, value: int, tmp_path: Path
) -> None:
    section, key = path.rsplit(".", 1)
    lines, indent = ["events:"], "  "
    for part in section.split("."):
        lines.append(f"{indent}{part}:")
        indent += "  "
    lines.append(f"{indent}{key}: {value}")
    file = tmp_path / "chi.yaml"
    file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert key in str(info.value)
