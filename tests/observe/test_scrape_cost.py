"""A scrape costs three pipelined round trips, however many topics and subscriptions exist."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from support import CommandCounter, RedisServers
from support.exporter import Exporter, sample

from chi_redis import EventBus
from chi_redis.observe.gauges import StreamGauges
from chi_redis.runtime.subscriptions import SubscriptionRecord, encode_record

pytestmark = pytest.mark.redis

TOPICS, SUBS = 200, 20


def _deployment(client: redis.Redis, bus: EventBus) -> None:
    """TOPICS topic streams with one entry each, SUBS wildcard subscriptions on every one."""
    k = bus.keys
    pipe = client.pipeline(transaction=False)
    for t in range(TOPICS):
        pipe.sadd(k.topics(), f"topic{t}")
        pipe.xadd(k.stream(f"topic{t}"), {"id": f"e{t}", "type": f"topic{t}.created"})
        for s in range(SUBS):
            pipe.xgroup_create(k.stream(f"topic{t}"), f"sub{s}", id="0")
    for s in range(SUBS):
        record = SubscriptionRecord(name=f"sub{s}", types=("**",), wildcard=True)
        pipe.hset(k.subs(), f"sub{s}", encode_record(record))
    pipe.execute()


def _commands(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name: int(v["calls"]) for name, v in stats.items()}


def test_a_scrape_of_200_topics_and_20_subscriptions_is_three_round_trips(
    redis_servers: RedisServers, ns: str, exporters: Callable[..., Exporter],
) -> None:
    server = redis_servers.start()
    client = server.client()
    bus = EventBus(server.client(), namespace=ns)
    _deployment(client, bus)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StreamGauges(bus))
    with CommandCounter(bus.client) as counter:
        page = generate_latest(registry).decode()
    assert counter.commands == ["PIPELINE"] * 3  # nothing sent outside the three pipelines
    assert page.count("chi_subscription_lag{") == TOPICS * SUBS

    # The exporter process, counted by the server: the commands of one scrape grow with the
    # topics and subscriptions (a few per stream), never with the groups (TOPICS * SUBS).
    exporter = exporters(server.url, ns)
    exporter.metrics()  # the first scrape opens the exporter's connection
    client.config_resetstat()
    m = exporter.metrics()
    after = _commands(client)
    assert sample(m, "chi_subscription_lag", subscription="sub7", topic="topic123") == 1
    assert sample(m, "chi_stream_length", topic="topic199") == 1
    # (not counted: this test's own commands, a connection check of the client's pool)
    ignored = {"cmdstat_config|resetstat", "cmdstat_info", "cmdstat_hello",
               "cmdstat_client|setinfo", "cmdstat_ping"}
    sent = sum(n for name, n in after.items() if name not in ignored)
    # (+ 4: the topics set, the subscription registry, the partitioned topics and TIME)
    assert sent <= 4 * TOPICS + 4 * SUBS + 4, sorted(after.items())
    assert after["cmdstat_xinfo|groups"] == TOPICS + SUBS
    client.close()
