"""stats: per topic and per subscription, pipelined."""

from __future__ import annotations

import json
import time

import msgspec
import pytest
import redis

from chi_redis import Event, EventBus
from chi_redis.ops.stats import collect

from .conftest import Cli, Sh, publish_n

pytestmark = pytest.mark.redis  # every test runs against the real server


def test_stats_report_lag_pending_delayed_and_dead_letters(
    cli: Cli, bus: EventBus, client: redis.Redis
) -> None:
    stream = bus.keys.stream("order")
    sids = publish_n(bus, 10)
    client.xgroup_create(stream, "audit", id="0")
    client.hset(bus.keys.subs(), "audit", msgspec.json.encode({"types": ["order.*"],
                                                               "last_seen_ms": 1}))
    client.xreadgroup("audit", "w1", {stream: ">"}, count=4)  # 4 pending, 6 unread
    client.zadd(bus.keys.delayed("audit"), {b"m1": 1, b"m2": 2})
    for i in range(3):
        client.xadd(bus.keys.dlq("audit"), {"reason": "x", "i": i})

    st = json.loads(cli("--json", "stats").stdout)
    [topic] = st["topics"]
    assert topic["topic"] == "order" and topic["length"] == 10 and topic["groups"] == 1
    assert topic["first_id"] == sids[0] and topic["last_id"] == sids[-1]
    assert topic["first_event_time"] <= topic["last_event_time"]
    assert topic["memory_bytes"] > 0
    [sub] = st["subscriptions"]
    assert sub["name"] == "audit" and sub["registered"] and sub["topics"] == ["order"]
    assert (sub["lag"], sub["pending"], sub["consumers"]) == (6, 4, 1)
    assert (sub["delayed"], sub["dead_letters"]) == (2, 3)
    assert 0 <= sub["oldest_pending_age_s"] < 60
    text = cli("stats").stdout
    assert "order" in text and "audit" in text
    client.hset(bus.keys.subs(), "other", msgspec.json.encode({"types": ["x.*"]}))
    assert [s["name"] for s in json.loads(cli("--json", "stats").stdout)["subscriptions"]] == [
        "audit", "other"]
    only = json.loads(cli("--json", "stats", "--sub", "other").stdout)
    assert [s["name"] for s in only["subscriptions"]] == ["other"]  # --sub: only those


def test_stats_on_100_topics_and_10_subscriptions_is_well_under_a_second(
    cli: Cli, bus: EventBus, client: redis.Redis
) -> None:
    topics = [f"t{i:03d}" for i in range(100)]
    bus.publish_batch([Event(type=f"{t}.happened", data={"j": j}) for t in topics
                       for j in range(10)])
    pipe = client.pipeline(transaction=False)
    for s in range(10):
        pipe.hset(bus.keys.subs(), f"sub{s}", msgspec.json.encode({"types": ["*.happened"]}))
        for t in topics:
            pipe.xgroup_create(bus.keys.stream(t), f"sub{s}", id="0")
    pipe.execute()
    for t in topics[:50]:  # some pending entries too
        client.xreadgroup("sub0", "w", {bus.keys.stream(t): ">"}, count=3)

    collect(bus)  # warm the connection
    t0 = time.perf_counter()
    st = collect(bus)
    elapsed = time.perf_counter() - t0
    assert len(st.topics) == 100 and len(st.subscriptions) == 10
    assert next(s for s in st.subscriptions if s.name == "sub0").pending == 150
    assert elapsed < 0.5, f"stats took {elapsed:.3f}s"

    t0 = time.perf_counter()
    cli("--json", "stats")
    assert time.perf_counter() - t0 < 1.0


def test_stats_watch_refreshes(cli: Cli, bus: EventBus) -> None:
    publish_n(bus, 2)
    out = cli("--json", "stats", "--watch", "--interval", "0.1", "--iterations", "3").stdout
    assert len(out.splitlines()) == 3
    assert all(json.loads(line)["topics"][0]["length"] == 2 for line in out.splitlines())


def test_stats_as_a_subprocess(sh: Sh, bus: EventBus) -> None:
    publish_n(bus, 3)
    proc = sh("stats")
    assert proc.returncode == 0, proc.stderr
    assert "order" in proc.stdout and "SUBSCRIPTION" in proc.stdout
