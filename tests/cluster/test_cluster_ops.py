"""Retention and the Prometheus exporter on a Redis Cluster, topics on all three masters:
the real ``chi-redis retention apply`` and ``chi-redis metrics`` given one node's URL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.cluster import LocalCluster, spread_topics
from support.exporter import Exporter, sample
from support.waiting import wait_until

from chi_redis import Event, EventBus
from chi_redis.cli.main import cli as chi_cli

pytestmark = pytest.mark.redis


def _seed(cbus: EventBus, cluster: LocalCluster) -> list[str]:
    """30 events on each of three topics, one topic per master; a group on the first topic
    that read nothing (it holds back that topic's trim); a group on the second that read
    and acked 30 and holds 0, and on the third that read 5 and acks none (pending)."""
    topics = spread_topics(cluster, cbus.keys.stream, "ops")
    assert len({cluster.owner(cbus.keys.stream(t)) for t in topics}) == 3
    for t in topics:
        cbus.publish_batch([Event(type=f"{t}.made", topic=t, data={"i": i}) for i in range(30)])
    c = cbus.client
    s0, s1, s2 = (cbus.keys.stream(t) for t in topics)
    c.xgroup_create(s0, "lagging", id="0")
    c.xgroup_create(s1, "done", id="0")
    read = c.xreadgroup("done", "c1", {s1: ">"}, count=100)
    c.xack(s1, "done", *[sid for sid, _ in read[0][1]])
    c.xgroup_create(s2, "stuck", id="0")
    c.xreadgroup("stuck", "c1", {s2: ">"}, count=5)
    return topics


def test_retention_apply_trims_every_master_and_holds_back_for_a_lagging_group(
    cbus: EventBus, redis_cluster: LocalCluster, ns: str
) -> None:
    topics = _seed(cbus, redis_cluster)
    runner = CliRunner(env={"CHI_REDIS_URL": None, "CHI_NAMESPACE": None, "CHI_CONFIG": None})
    res = runner.invoke(chi_cli, ["--redis-url", redis_cluster.nodes[2].url, "--namespace", ns,
                                  "--json", "retention", "apply", "--max-len", "10"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    got = {d["topic"]: d for d in map(json.loads, res.output.splitlines())}
    lagging, done, stuck = (got[t] for t in topics)
    assert (lagging["trimmed"], lagging["held_back"], lagging["held_by"]) == (0, 20, "lagging")
    assert (done["trimmed"], done["length"]) == (20, 10)
    # the stuck group's 5 pending entries are the first 5: everything after them may go,
    # nothing it still holds
    assert stuck["trimmed"] == 0 and stuck["held_by"] == "stuck"
    c = cbus.client
    for t, left in zip(topics, (30, 10, 30), strict=True):
        assert c.xlen(cbus.keys.stream(t)) == left
        assert c.hlen(cbus.keys.ids(t)) == left  # the id lookup follows the stream
        assert len(cbus.store.load_by_topic(t, limit=100)) == left


def test_metrics_exporter_reads_every_master(
    cbus: EventBus, redis_cluster: LocalCluster, ns: str, tmp_path: Path
) -> None:
    topics = _seed(cbus, redis_cluster)
    exporter = Exporter(redis_cluster.nodes[1].url, ns, tmp_path / "exporter.log")
    try:
        m = wait_until(lambda: (lambda s: s if sample(s, "chi_up") == 1.0 else None)(
            exporter.metrics()), 60, "a scrape with chi_up 1", interval=0.2)
        for t in topics:
            assert sample(m, "chi_stream_length", topic=t) == 30
        assert sample(m, "chi_subscription_lag", subscription="lagging", topic=topics[0]) == 30
        assert sample(m, "chi_subscription_lag", subscription="done", topic=topics[1]) == 0
        assert sample(m, "chi_subscription_pending", subscription="stuck", topic=topics[2]) == 5
        assert sample(m, "chi_subscription_lag", subscription="stuck", topic=topics[2]) == 25
        assert sample(m, "chi_scrape_errors_total", source="redis") == 0
    finally:
        assert exporter.stop() == 0, exporter.output()
