"""``chi-redis tail`` against a cluster node's URL, as a real CLI process: the topics'
streams are on three masters, so each read is one XREAD per slot (docs/design.md §3.4)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.cluster import LocalCluster, delete_cluster_namespace, spread_topics
from support.processes import clean_env
from support.waiting import wait_until

from chi_redis import Event, EventBus

pytestmark = pytest.mark.redis

CHI = str(Path(sys.executable).parent / "chi-redis")


def _tail(url: str, ns: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([CHI, "tail", "--redis-url", url, "--namespace", ns, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())


def test_tail_reads_topics_on_every_master(redis_cluster: LocalCluster, ns: str) -> None:
    bus = EventBus.from_url(redis_cluster.url, namespace=ns)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        topics = spread_topics(redis_cluster, bus.keys.stream, "tl")
        history = [Event(type="tl.old" if i % 2 else "tl.skip", topic=topics[i % 3],
                         data={"n": i}) for i in range(30)]
        bus.publish_batch(history)
        # From the start of the streams: every matching event of the three masters, each
        # topic's in order (across masters the order is by stream id: each master's clock),
        # then it stops (--count).
        old = _tail(redis_cluster.nodes[-1].url, ns, *topics, "--from", "-1h",
                    "--types", "tl.old", "--count", "15")
        procs.append(old)
        out, err = old.communicate(timeout=60)
        assert old.returncode == 0, err.decode()
        lines = [json.loads(line) for line in out.splitlines()]
        for topic in topics:
            assert [d["id"] for d in lines if d["topic"] == topic] == [
                e.id for e in history if e.type == "tl.old" and e.topic == topic]
        assert len(lines) == 15

        # Following new events only: published while it runs, until it printed 6.
        new = _tail(redis_cluster.url, ns, *topics, "--count", "6")
        procs.append(new)
        sent: list[str] = []

        def publish_until_done() -> bool:
            for topic in topics:
                event = Event(type="tl.new", topic=topic, data={})
                bus.publish(event)
                sent.append(event.id)
            return new.poll() is not None

        wait_until(publish_until_done, 60, "tail to print 6 new events", interval=0.2)
        out, err = new.communicate(timeout=60)
        assert new.returncode == 0, err.decode()
        shown = [json.loads(line) for line in out.splitlines()]
        assert len(shown) == 6 and all(d["type"] == "tl.new" for d in shown)
        ids = [d["id"] for d in shown]
        assert set(ids) <= set(sent)
        for topic in topics:
            mine = [d["id"] for d in shown if d["topic"] == topic]
            assert mine == sorted(mine, key=sent.index)
        assert {d["topic"] for d in shown} == set(topics)  # all three masters read
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        delete_cluster_namespace(bus.client, ns)
        bus.close()
