"""The runtime on a local Redis Cluster (3 masters + 3 replicas, tests/support/cluster.py):
detection from any node's URL, and the whole path with topics on every master."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from redis.cluster import RedisCluster
from support.cluster import LocalCluster, spread_topics
from support.runtime import Recorder, in_process_runtime
from support.waiting import wait_until

from chi_redis import Event, EventBus
from chi_redis.backend.connection import connect
from chi_redis.cli.main import cli as chi_cli
from chi_redis.config import bus_from_config, load_config

pytestmark = pytest.mark.redis


def test_any_nodes_url_gives_a_cluster_client(redis_cluster: LocalCluster, tmp_path: Path,
                                              ns: str) -> None:
    replica = redis_cluster.nodes[-1]
    for url in (redis_cluster.url, replica.url):
        client = connect(url)
        assert isinstance(client, RedisCluster), url
        client.close()
    assert not isinstance(connect(redis_cluster.url, detect_cluster=False), RedisCluster)
    cfg = tmp_path / "chi.yaml"
    cfg.write_text(f"events:\n  bus:\n    redis:\n      url: {replica.url}\n")
    bus = bus_from_config(load_config(path=cfg, env={}), namespace=ns)
    assert isinstance(bus.client, RedisCluster)
    plain = bus_from_config(load_config(path=cfg, env={}), namespace=ns, detect_cluster=False)
    assert plain.cluster_unknown and plain.adopt_cluster()
    assert isinstance(plain.client, RedisCluster) and not plain.cluster_unknown
    bus.close()
    plain.close()


def test_topics_on_every_master_publish_query_consume_dead_letter_and_stats(
    cbus: EventBus, redis_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, ns: str
) -> None:
    topics = spread_topics(redis_cluster, cbus.keys.stream, "ct")
    owners = {redis_cluster.owner(cbus.keys.stream(t)) for t in topics}
    assert len(owners) == 3  # one topic on each master
    t0 = datetime.now(UTC)
    single = [Event(type=f"{t}.made", topic=t, data={"n": i}) for i, t in enumerate(topics)]
    sids = [cbus.publish(e) for e in single]
    mixed = [Event(type=f"{topics[i % 3]}.made", topic=topics[i % 3], data={"n": 10 + i},
                   timestamp=t0 - timedelta(hours=1 if i % 4 == 0 else 0))
             for i in range(30)]
    mixed_sids = cbus.publish_batch(mixed, chunk_size=7)
    assert len(mixed_sids) == 30 and len(sids) == 3
    every = single + mixed
    assert sorted(cbus.store.topics()) == sorted(topics)
    assert all(cbus.store.load(e.id) == e for e in every)
    assert cbus.publish(single[0]) == sids[0]  # a retried event id writes nothing twice
    ranged = cbus.store.load_by_time_range(t0 - timedelta(hours=2), t0 + timedelta(hours=1))
    assert {e.id for e in ranged} == {e.id for e in every}
    assert len(cbus.store.load_by_topic(topics[1], limit=100)) == 11

    got, poison = Recorder(), {mixed[3].id, mixed[4].id}

    @cbus.subscribe("c-all", topics=topics, max_retries=1, min_backoff_ms=1,
                    max_backoff_ms=5, start="earliest")
    def handle(event: Event) -> None:
        if event.id in poison:
            raise RuntimeError("boom")
        got.add(event.id)

    with in_process_runtime(cbus, monkeypatch) as rt:
        rt.worker(rt.broker())
        wait_until(lambda: len(got) == len(every) - 2 and len(cbus.dead_letters("c-all")) == 2,
                   60, "every event handled or dead-lettered")
        dead = cbus.dead_letters("c-all")
        assert {d.event_id for d in dead} == poison
        poison.clear()
        assert cbus.redrive("c-all") == 2
        wait_until(lambda: len(got) == len(every), 60, "redriven events handled")
    assert got.counts() == {e.id: 1 for e in every}  # each handled once
    assert cbus.dead_letters("c-all") == []

    runner = CliRunner(env={"CHI_REDIS_URL": None, "CHI_NAMESPACE": None, "CHI_CONFIG": None})
    res = runner.invoke(chi_cli, ["--redis-url", redis_cluster.nodes[1].url, "--namespace", ns,
                                  "--json", "stats"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert {t["topic"]: t["length"] for t in stats["topics"]} == dict.fromkeys(sorted(topics), 11)
    [sub] = stats["subscriptions"]
    assert (sub["name"], sorted(sub["topics"]), sub["lag"], sub["pending"],
            sub["dead_letters"]) == ("c-all", sorted(topics), 0, 0, 0)

