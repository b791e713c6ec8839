"""The asyncio bus and the background publisher on the local cluster: built from any node's
URL (no I/O at construction), they switch to ``redis.asyncio.cluster.RedisCluster`` at the
first publish and write each topic's events on its own master (docs/design.md §3.4)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from support.cluster import LocalCluster, delete_cluster_namespace, spread_topics

from chi_redis import AsyncEventBus, Event, EventBus
from chi_redis.publish.buffered import BufferedPublisher

pytestmark = pytest.mark.redis


def _flush_scripts(cluster: LocalCluster) -> None:
    """Every master forgets the scripts: the asyncio path must load them (NOSCRIPT)."""
    with contextlib.closing(cluster.client()) as c:
        for node in c.get_primaries():
            node.redis_connection.script_flush()


def test_asyncio_bus_and_buffered_publisher_on_a_cluster(
    redis_cluster: LocalCluster, ns: str
) -> None:
    sync = EventBus.from_url(redis_cluster.url, namespace=ns)
    topics = spread_topics(redis_cluster, sync.keys.stream, "as")
    replica = redis_cluster.nodes[-1]  # any node's URL: a replica's too
    _flush_scripts(redis_cluster)

    async def main() -> tuple[list[str], list[str], list[str], int]:
        bus = AsyncEventBus.from_url(replica.url, namespace=ns)
        assert bus.cluster_unknown and not isinstance(bus.client, AsyncRedisCluster)
        try:
            # Two tasks publish first at once: one asks the server, both publish.
            one = await asyncio.gather(*(
                bus.publish(Event(type="as.one", topic=t, data={"t": t})) for t in topics))
            assert isinstance(bus.client, AsyncRedisCluster) and not bus.cluster_unknown
            batch = [Event(type="as.many", topic=topics[i % 3], data={"n": i})
                     for i in range(90)]
            many = await bus.publish_batch(batch, chunk_size=7)
            idem = await bus.publish(Event(type="as.one", topic=topics[0], data={}),
                                     idempotency_key="k1")
            again = await bus.publish(Event(type="as.one", topic=topics[0], data={}),
                                      idempotency_key="k1")
            assert idem == again
            # acks="replicas" per call: the WAIT goes to each topic's master.
            acked = [await bus.publish(Event(type="as.acked", topic=t, data={}),
                                       acks="replicas") for t in topics]
            for topic, sid in zip(topics, acked, strict=True):
                copy = redis_cluster.replica_of(redis_cluster.owner(sync.keys.stream(topic)))
                with contextlib.closing(copy.client()) as c:
                    c.execute_command("READONLY")
                    assert c.xrange(sync.keys.stream(topic))[-1][0].decode() == sid
            async with BufferedPublisher(bus, batch_size=16, flush_interval_ms=20) as buf:
                for i in range(60):
                    await buf.publish(Event(type="as.buf", topic=topics[i % 3], data={"n": i}))
            return one, many, [e.id for e in batch], buf.failed_count
        finally:
            await bus.close()

    try:
        one, many, batch_ids, failed = asyncio.run(main())
        assert failed == 0
        # Every stream lives on its own master and holds what was published there, in order.
        owners = {redis_cluster.owner(sync.keys.stream(t)) for t in topics}
        assert len(owners) == 3
        for k, topic in enumerate(topics):
            events = sync.store.load_by_topic(topic, limit=1000)
            assert [e.type for e in events] == (
                ["as.one"] + ["as.many"] * 30 + (["as.one"] if k == 0 else []) + ["as.acked"]
                + ["as.buf"] * 20)
            assert [e.id for e in events if e.type == "as.many"] == batch_ids[k::3]
            assert [e.data["n"] for e in events if e.type == "as.buf"] == list(range(k, 60, 3))
        # Stream ids are per stream (two masters may give the same one).
        assert len(one) == 3 and all(len(set(many[k::3])) == 30 for k in range(3))
        assert sync.store.load(batch_ids[0]) is not None
    finally:
        delete_cluster_namespace(sync.client, ns)
        sync.close()
