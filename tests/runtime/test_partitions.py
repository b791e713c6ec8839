"""Partitioned topics (docs/design.md §15): routing, declaration, ownership, per-key order
with worker processes killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from support.ordering import order_problems
from support.processes import Workers
from support.servers import REDIS_URL
from support.waiting import wait_until

from chi_redis import ConfigError, Event, EventBus, ValidationError
from chi_redis.cli.main import cli as chi_cli
from chi_redis.config import bus_from_config, load_config
from chi_redis.events.partitioning import Declaration, partition_of
from chi_redis.ops.retention import Policy, trim_topic
from chi_redis.ops.stats import collect

pytestmark = pytest.mark.redis
MODULE = "runtime.proc_partitions"


def test_order_check_catches_violations() -> None:
    # The checker of the process test, on logs that break each rule.
    ok = ["s a 0 1", "d a 0 1", "s a 1 1", "s a 1 2", "d a 1 2", "d a 1 1"]
    assert order_problems(ok)[1] == []  # a run again after a kill is allowed
    early = ["s a 0 1", "s a 1 2", "d a 1 2", "d a 0 1"]
    assert order_problems(early)[1] == ["a/1 started before a/[0] completed",
                                        "a/0 first completed after a/1"]
    swapped = ["s a 0 1", "s a 1 2", "d a 0 1", "d a 1 2", "d a 0 1"]
    assert "a/1 started" in order_problems(swapped)[1][0]


def test_mapping_is_stable_crc32() -> None:
    # The documented mapping: CRC-32 of the key's UTF-8, mod N (fixed values: a change of
    # the hash would move every key to another partition).
    # 0xCBF43926 is CRC-32's published check value of "123456789".
    assert partition_of("123456789", 1000) == 0xCBF43926 % 1000 == 262
    assert [partition_of(k, 8) for k in ("a", "customer-42", "ü")] == [3, 5, 5]
    d = Declaration(8, "metadata.customer")
    e = Event(type="orders.placed", data={}, metadata={"customer": "customer-42"})
    assert d.part("orders", e) == "orders/5"
    assert Declaration(4, "data.k").part("orders", Event(type="orders.x", data={"k": 7})) \
        == Declaration(4, "data.k").part("orders", Event(type="orders.x", data={"k": "7"}))


def test_declaration_errors(real_client: redis.Redis, ns: str) -> None:
    bus = EventBus(real_client, namespace=ns)
    with pytest.raises(ConfigError, match="partition key"):
        bus.declare_topic("orders", partitions=4, key="customer")
    with pytest.raises(ConfigError, match="partitions must be"):
        bus.declare_topic("orders", partitions=0, key="metadata.c")
    bus.declare_topic("orders", partitions=4, key="metadata.c")
    bus.declare_topic("orders", partitions=4, key="metadata.c")  # the same again: fine
    with pytest.raises(ConfigError, match="changing the partitioning is explicit"):
        bus.declare_topic("orders", partitions=8, key="metadata.c")
    # Another process configured otherwise refuses to publish.
    other = EventBus(real_client, namespace=ns)
    other.partitions.configure("orders", 8, "metadata.c")
    with pytest.raises(ConfigError, match="4 partitions"):
        other.publish(Event(type="orders.placed", metadata={"c": "x"}))
    with pytest.raises(ValidationError, match="no partition key"):
        bus.publish(Event(type="orders.placed", data={}))
    bus.publish(Event(type="orders.placed", metadata={"c": "x"}))
    with pytest.raises(ConfigError, match="hold 1 events"):
        bus.declare_topic("orders", partitions=8, key="metadata.c", resize=True)
    bus.declare_topic("empty", partitions=2, key="data.k")
    assert bus.declare_topic("empty", partitions=4, key="data.k", resize=True).partitions == 4
    assert EventBus(real_client, namespace=ns).partitions.get("empty") == Declaration(4, "data.k")
    bus.publish(Event(type="plain.x"))
    with pytest.raises(ConfigError, match="holds 1 events"):
        bus.declare_topic("plain", partitions=2, key="metadata.c")


def test_publish_load_query_see_one_topic(real_client: redis.Redis, ns: str) -> None:
    bus = EventBus(real_client, namespace=ns)
    bus.declare_topic("orders", partitions=4, key="data.key")
    events = [Event(type="orders.placed", data={"key": f"k{i % 10}", "seq": i})
              for i in range(40)]
    bus.publish(events[0])
    bus.publish_batch(events[1:])
    lens = [real_client.xlen(f"{ns}:{{orders/{p}}}:stream") for p in range(4)]
    assert sum(lens) == 40 and all(lens) and not real_client.exists(f"{ns}:{{orders}}:stream")
    assert bus.store.topics() == ["orders"]
    loaded = bus.store.load(events[17].id)
    assert loaded is not None and loaded.topic == "orders" and loaded.data["seq"] == 17
    start = events[0].timestamp
    found = bus.store.load_by_time_range(start, events[-1].timestamp, topic="orders")
    assert sorted(e.data["seq"] for e in found) == list(range(40))
    page = bus.store.load_by_topic("orders", 0, 40)
    assert [e.data["seq"] for e in page] == list(range(40))  # append order across partitions
    [topic] = collect(bus).topics
    assert (topic.topic, topic.length, topic.partitions) == ("orders", 40, 4)
    runner = CliRunner(env={"CHI_REDIS_URL": None, "CHI_NAMESPACE": None, "CHI_CONFIG": None})
    res = runner.invoke(chi_cli, ["--redis-url", REDIS_URL, "--namespace", ns, "replay",
                                  "--topic", "orders", "--since", "-1h", "--print"])
    assert res.exit_code == 0, res.output
    printed = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert sorted(p["id"] for p in printed) == sorted(e.id for e in events)
    assert {p["topic"] for p in printed} == {"orders"}
    res = runner.invoke(chi_cli, ["--redis-url", REDIS_URL, "--namespace", ns, "tail",
                                  "orders", "--from", "-1h", "--count", "40"])
    assert res.exit_code == 0, res.output
    tailed = [json.loads(line) for line in res.output.splitlines()]
    assert sorted(t["id"] for t in tailed) == sorted(e.id for e in events)
    assert {t["topic"] for t in tailed} == {"orders"}
    trimmed = trim_topic(bus, "orders", Policy(max_len=2))  # max_len is per partition
    assert (trimmed.trimmed, trimmed.length) == (32, 8)


def test_config_declares_partitions(real_client: redis.Redis, ns: str, tmp_path: Path) -> None:
    cfg = tmp_path / "chi.yaml"
    cfg.write_text("events:\n  topics:\n    orders:\n      partitions: 3\n"
                   "      partition_key: metadata.customer\n")
    bus = bus_from_config(load_config(path=cfg, env={}), url=REDIS_URL, namespace=ns)
    bus.publish(Event(type="orders.placed", metadata={"customer": "c1"}))  # stored at first use
    assert EventBus(real_client, namespace=ns).partitions.get("orders") == Declaration(
        3, "metadata.customer")
    cfg.write_text("events:\n  topics:\n    orders:\n      partitions: 3\n"
                   "      partition_key: customer\n")
    with pytest.raises(ConfigError, match="partition_key"):
        load_config(path=cfg, env={})


def test_order_kept_with_three_workers_and_a_kill(
    tmp_path: pytest.TempPathFactory, ns: str, real_client: redis.Redis, workers: Workers,
) -> None:
    bus = EventBus(real_client, namespace=ns)
    bus.declare_topic("orders", partitions=8, key="data.key")
    keys, per_key = [f"k{i}" for i in range(100)], 100
    procs = [workers.start(MODULE, threads=4) for _ in range(3)]
    wait_until(lambda: all("is ready for action" in p.output() for p in procs), 120,
               "workers ready", interval=0.1)
    members = f"{ns}:q:{{ordered}}:members"
    wait_until(lambda: real_client.zcard(members) == 3, 60, "three live consumers")
    # Every partition owned, each worker a fair share (ceil(8/3) = 3 at most).
    owners = [f"{ns}:q:{{ordered}}:owner:orders/{p}" for p in range(8)]

    def shares() -> list[int]:
        held = [o for o in real_client.mget(owners) if o is not None]
        return sorted(held.count(o) for o in set(held)) if len(held) == 8 else []

    wait_until(lambda: shares() == [2, 3, 3], 60, "8 partitions spread 3/3/2")
    for seq in range(per_key):
        bus.publish_batch([Event(type="orders.placed", data={
            "key": k, "seq": seq, "fail": seq == 50 and k in ("k7", "k8")}) for k in keys])
    log = f"{ns}:t:log"
    t0 = time.monotonic()
    wait_until(lambda: real_client.llen(log) > 6000, 300, "a third handled")
    print(f"a third in {time.monotonic() - t0:.1f} s")
    os.killpg(procs[0].pid, signal.SIGKILL)  # the worker and its child, no cleanup
    wait_until(lambda: shares() == [4, 4], 60, "the dead worker's partitions taken over")
    total = len(keys) * per_key

    def completed() -> int:
        lines = [b.decode() for b in real_client.lrange(log, 0, -1)]
        return sum(len(v) for v in order_problems(lines)[0].values())

    print(f"taken over at {time.monotonic() - t0:.1f} s")
    wait_until(lambda: completed() == total, 600, "every event handled", interval=1)
    print(f"all done at {time.monotonic() - t0:.1f} s")
    lines = [b.decode() for b in real_client.lrange(log, 0, -1)]
    done, problems = order_problems(lines)
    assert problems == []
    assert all(done[k] == set(range(per_key)) for k in keys)
    # The two failing events ran twice (a retry), and still in order.
    assert sum(1 for line in lines if line.startswith("s k7 50 ")) >= 2


def test_rebalance_on_join_and_leave(ns: str, real_client: redis.Redis, workers: Workers) -> None:
    bus = EventBus(real_client, namespace=ns)
    bus.declare_topic("orders", partitions=6, key="data.key")
    owners = [f"{ns}:q:{{ordered}}:owner:orders/{p}" for p in range(6)]

    def shares() -> list[int]:
        held = [o for o in real_client.mget(owners) if o is not None]
        return sorted(held.count(o) for o in set(held)) if len(held) == 6 else []

    first = workers.start(MODULE, threads=2)
    wait_until(lambda: shares() == [6], 120, "one worker holds all 6")
    second = workers.start(MODULE, threads=2)
    wait_until(lambda: shares() == [3, 3], 120, "a joining worker gets half")
    second.stop()  # a clean shutdown gives its partitions up at once
    wait_until(lambda: shares() == [6], 60, "the leaver's partitions taken back")
    assert first.alive()


def test_asyncio_bus_and_buffered_publisher_route_to_partitions(
    real_client: redis.Redis, ns: str
) -> None:
    import asyncio

    from chi_redis import AsyncEventBus, BufferedPublisher

    EventBus(real_client, namespace=ns).declare_topic("orders", partitions=4, key="data.key")
    events = [Event(type="orders.placed", data={"key": f"k{i % 10}", "seq": i})
              for i in range(60)]

    async def publish() -> None:
        bus = AsyncEventBus.from_url(REDIS_URL, namespace=ns)
        try:
            await bus.publish(events[0])
            await bus.publish_batch(events[1:20])
            publisher = BufferedPublisher(bus, batch_size=16, max_buffer=100)
            for e in events[20:]:
                await publisher.publish(e)
            await publisher.flush()
            await publisher.close()
            with pytest.raises(ValidationError):  # no key: refused, nothing written
                await bus.publish(Event(type="orders.placed", data={"seq": -1}))
        finally:
            await bus.close()

    asyncio.run(publish())
    assert not real_client.exists(f"{ns}:{{orders}}:stream")
    for p in range(4):  # each event in its key's partition
        assert real_client.xlen(f"{ns}:{{orders/{p}}}:stream") == sum(
            1 for e in events if partition_of(e.data["key"], 4) == p)
    loaded = EventBus(real_client, namespace=ns).store.load_by_topic("orders", 0, 100)
    assert sorted(e.data["seq"] for e in loaded) == list(range(60))


def test_a_batch_subscription_of_a_partitioned_topic_is_refused(
    real_client: redis.Redis, ns: str
) -> None:
    from chi_redis.runtime.broker import StreamsBroker

    bus = EventBus(real_client, namespace=ns)
    bus.declare_topic("orders", partitions=2, key="data.key")
    bus.subscribe("order-batches", topics=["orders"], batch_size=10)(lambda events: None)
    with pytest.raises(ConfigError, match="batch subscriptions do not read partitions"):
        StreamsBroker(bus)
