"""Partitioned topics on the local Redis Cluster (docs/design.md §15): each partition its
own slot, spread over the masters; publish, queries, stats and ordered consumption by two
in-process workers across them."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from click.testing import CliRunner
from support.cluster import LocalCluster
from support.ordering import order_problems
from support.runtime import in_process_runtime
from support.waiting import wait_until

from chi_redis import Event, EventBus
from chi_redis.cli.main import cli as chi_cli

pytestmark = pytest.mark.redis


def test_partitions_spread_over_masters_and_keep_per_key_order(
    cbus: EventBus, redis_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, ns: str
) -> None:
    decl = cbus.declare_topic("po", partitions=6, key="data.key")
    streams = [cbus.keys.stream(p) for p in decl.parts("po")]
    assert len({redis_cluster.owner(s) for s in streams}) == 3  # on every master
    keys, per_key = [f"k{i}" for i in range(30)], 20
    events = [Event(type="po.placed", data={"key": k, "seq": n})
              for n in range(per_key) for k in keys]
    cbus.publish(events[0])
    cbus.publish_batch(events[1:], chunk_size=50)
    assert cbus.store.topics() == ["po"]
    assert sum(cbus.client.xlen(s) for s in streams) == len(events)
    assert all(cbus.store.load(e.id) == e for e in events[::37])
    found = cbus.store.load_by_time_range(events[0].timestamp - timedelta(seconds=1),
                                          events[-1].timestamp + timedelta(seconds=1))
    assert {e.id for e in found} == {e.id for e in events}

    log: list[str] = []
    lock = threading.Lock()

    def handle(event: Event) -> None:
        who = threading.current_thread().name
        with lock:
            log.append(f"s {event.data['key']} {event.data['seq']} {who}")
        time.sleep(0.001)
        with lock:
            log.append(f"d {event.data['key']} {event.data['seq']} {who}")

    owners = [f"{ns}:q:{{po-ordered}}:owner:{p}" for p in decl.parts("po")]
    other = EventBus.from_url(redis_cluster.url, namespace=ns)  # a second worker's bus
    for bus in (cbus, other):
        bus.subscribe("po-ordered", topics=["po"], start="earliest")(handle)
    with in_process_runtime(cbus, monkeypatch) as rt:
        rt.worker(rt.broker())
        rt.worker(rt.broker(other, set_global=False))

        def shares() -> list[int]:
            held = [o for o in cbus.client.mget(owners) if o is not None]
            return sorted(held.count(o) for o in set(held)) if len(held) == 6 else []

        wait_until(lambda: shares() == [3, 3], 60, "two consumers holding 3 partitions each")
        more = [Event(type="po.placed", data={"key": k, "seq": n})
                for n in range(per_key, 2 * per_key) for k in keys]
        cbus.publish_batch(more)  # now read by both, each from its own partitions
        events += more
        wait_until(lambda: sum(1 for line in list(log) if line[0] == "d") >= len(events),
                   120, "every event handled")
    other.close()
    done, problems = order_problems(list(log))
    assert problems == []
    assert all(done[k] == set(range(2 * per_key)) for k in keys)
    runner = CliRunner(env={"CHI_REDIS_URL": None, "CHI_NAMESPACE": None, "CHI_CONFIG": None})
    res = runner.invoke(chi_cli, ["--redis-url", redis_cluster.url, "--namespace", ns,
                                  "--json", "stats"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    [topic] = json.loads(res.output)["topics"]
    assert (topic["topic"], topic["length"], topic["partitions"]) == ("po", len(events), 6)


def test_replay_and_tail_of_a_partitioned_topic_on_the_cluster(
    cbus: EventBus, redis_cluster: LocalCluster, ns: str
) -> None:
    decl = cbus.declare_topic("pr", partitions=6, key="data.key")
    events = [Event(type="pr.placed", data={"key": f"k{i % 9}", "seq": i}) for i in range(60)]
    cbus.publish_batch(events)
    runner = CliRunner(env={"CHI_REDIS_URL": None, "CHI_NAMESPACE": None, "CHI_CONFIG": None})
    base = ["--redis-url", redis_cluster.nodes[1].url, "--namespace", ns]
    res = runner.invoke(chi_cli, [*base, "replay", "--topic", "pr", "--since", "-1h", "--print"])
    assert res.exit_code == 0, res.output
    printed = [json.loads(x) for x in res.output.splitlines() if x.startswith("{")]
    assert sorted(p["id"] for p in printed) == sorted(e.id for e in events)
    assert {p["topic"] for p in printed} == {"pr"}
    res = runner.invoke(chi_cli, [*base, "replay", "--topic", "pr", "--since", "-1h",
                                  "--republish", "--checkpoint", "rp"])
    assert res.exit_code == 0, res.output
    for part in decl.parts("pr"):  # each copy in its original's partition (same key)
        seqs = [cbus.codec.decode(f, topic="pr").data["seq"]
                for _, f in cbus.client.xrange(cbus.keys.stream(part))]
        half = len(seqs) // 2
        assert seqs and sorted(seqs[:half]) == sorted(seqs[half:]), part
    res = runner.invoke(chi_cli, [*base, "tail", "pr", "--from", "-1h", "--count", "120"])
    assert res.exit_code == 0, res.output
    assert len(res.output.splitlines()) == 120
