"""``acks="replicas"`` on the local cluster (3 masters + 3 replicas): each call's WAIT goes
to the master of the slot it wrote, on the connection that wrote, so a publish returns
once that master's replica has the events; a replica that does not confirm in time makes
only its master's events unconfirmed (docs/design.md §3.4)."""

from __future__ import annotations

import contextlib
import signal

import pytest
from support.cluster import LocalCluster, delete_cluster_namespace, spread_topics
from support.servers import RedisServer

from chi_redis import Event, EventBus, NotReplicatedError

pytestmark = pytest.mark.redis


def _count(node: RedisServer, key: str) -> int:
    with contextlib.closing(node.client()) as c:
        c.execute_command("READONLY")
        return int(c.xlen(key))


def test_acks_replicas_on_every_master_and_a_paused_replica(
    redis_cluster: LocalCluster, ns: str
) -> None:
    # A timeout no loaded machine reaches where the replicas must confirm; a short one
    # where one replica is paused (shorter than the cluster's node timeout, 2 s).
    bus = EventBus.from_url(redis_cluster.url, namespace=ns, acks="replicas",
                            ack_timeout_ms=10_000)
    short = EventBus(bus.client, namespace=ns, acks="replicas", ack_timeout_ms=700)
    try:
        topics = spread_topics(redis_cluster, bus.keys.stream, "ak")
        masters = [redis_cluster.owner(bus.keys.stream(t)) for t in topics]
        replicas = [redis_cluster.replica_of(m) for m in masters]
        for topic in topics:
            bus.publish(Event(type="ak.made", topic=topic, data={}))
        batch = [Event(type="ak.made", topic=topics[i % 3], data={"n": i}) for i in range(60)]
        assert len(bus.publish_batch(batch, chunk_size=8)) == 60
        # Returned after WAIT: every replica already holds its master's 1 + 20 entries.
        for topic, replica in zip(topics, replicas, strict=True):
            assert _count(replica, bus.keys.stream(topic)) == 21

        paused = replicas[1]
        assert paused.proc is not None
        paused.proc.send_signal(signal.SIGSTOP)
        try:
            for i, topic in enumerate(topics):
                event = Event(type="ak.made", topic=topic, data={})
                if i == 1:
                    with pytest.raises(NotReplicatedError, match=masters[1]) as one:
                        short.publish(event)
                    assert one.value.unconfirmed == [0] and one.value.replicas == {0: 0}
                else:
                    bus.publish(event)
            with pytest.raises(NotReplicatedError) as many:
                short.publish_batch(batch[:30])  # a retry of events written: nothing new
        finally:
            paused.proc.send_signal(signal.SIGCONT)
        err = many.value
        # Only the paused replica's master's events are unconfirmed; all 30 are written.
        assert err.unconfirmed == [i for i in range(30) if i % 3 == 1]
        assert set(err.replicas.values()) == {0} and err.failed == []
        assert [err.written[i] for i in range(30)] == bus.publish_batch(batch[:30])
    finally:
        delete_cluster_namespace(bus.client, ns)
        bus.close()
