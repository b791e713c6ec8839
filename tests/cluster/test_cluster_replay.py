"""Replay on a local Redis Cluster (docs/design.md §3.4): a range spread over topics on
every master, delivered into one subscription and back onto the topics exactly once across
an interruption and a resume from the checkpoint (kept in shards in the slots written),
and ``chi-redis replay`` as a real process given one node's URL."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable

import msgspec
import pytest
from support.cluster import LocalCluster, spread_topics
from support.processes import ROOT, clean_env
from support.runtime import in_process_runtime
from support.waiting import wait_until

from chi_redis import Event, EventBus
from chi_redis.ops.replay import (
    QueueTarget,
    ReplayInterrupted,
    ReplayOptions,
    RepublishTarget,
    replay,
)
from chi_redis.runtime.encoder import decode_message

pytestmark = pytest.mark.redis

CHI = ROOT / ".venv" / "bin" / "chi-redis"
PER_TOPIC = 60


def publish_spread(bus: EventBus, cluster: LocalCluster, prefix: str) -> tuple[
        list[str], list[Event]]:
    """Topics on the three masters, ``PER_TOPIC`` events each, interleaved in time."""
    topics = spread_topics(cluster, bus.keys.stream, prefix)
    assert len({cluster.owner(bus.keys.stream(t)) for t in topics}) == 3
    events = [Event(type=f"{topics[i % 3]}.made", topic=topics[i % 3], data={"n": i})
              for i in range(3 * PER_TOPIC)]
    for i in range(0, len(events), 9):  # several appends, so one read page spans topics
        bus.publish_batch(events[i:i + 9])
    return topics, events


def queued_ids(bus: EventBus, sub: str) -> list[str]:
    """The event ids of the messages in ``sub``'s private stream, in stream order."""
    out = []
    for _, f in bus.client.xrange(bus.keys.queue(sub)):
        msg = decode_message(f[b"m"])
        assert msg.options["replay"] is True
        out.append(msg.args[1]["id"].decode())
    return out


def stop_after(n: int) -> tuple[threading.Event, Callable[[int], None]]:
    """A stop event set once ``n`` entries were read, and the progress callback."""
    stop, seen = threading.Event(), [0]

    def progress(k: int) -> None:
        seen[0] += k
        if seen[0] >= n:
            stop.set()

    return stop, progress


def test_replay_into_a_subscription_across_masters_resumes_exactly_once(
    cbus: EventBus, redis_cluster: LocalCluster
) -> None:
    topics, events = publish_spread(cbus, redis_cluster, "rq")
    target = QueueTarget(cbus, "c-replay")
    stop, progress = stop_after(50)
    opts = ReplayOptions(batch_size=10, checkpoint="rq-1", stop=stop)
    with pytest.raises(ReplayInterrupted) as info:
        replay(cbus, target, topics=topics, options=opts, progress=progress)
    first = queued_ids(cbus, "c-replay")
    assert 50 <= len(first) < len(events)
    assert info.value.report.delivered == len(first)
    # The progress is in the subscription's slot, beside the deliveries it counts.
    shard = cbus.keys.checkpoint_shard("rq-1", "c-replay")
    assert redis_cluster.owner(shard) == redis_cluster.owner(cbus.keys.queue("c-replay"))
    assert int(cbus.client.hget(shard, "delivered")) == len(first)

    # The rest on three threads (batches out of order, folded into the checkpoint).
    rest = replay(cbus, target, topics=topics,
                  options=ReplayOptions(batch_size=7, workers=3, checkpoint="rq-1"))
    assert rest.resumed and rest.total_delivered == len(events)
    ids = queued_ids(cbus, "c-replay")
    assert Counter(ids) == Counter(e.id for e in events)  # every event once
    assert ids[:len(first)] == first
    again = replay(cbus, target, topics=topics, options=ReplayOptions(checkpoint="rq-1"))
    assert again.already_complete and len(queued_ids(cbus, "c-replay")) == len(events)


def test_republish_by_event_time_across_masters_resumes_exactly_once(
    cbus: EventBus, redis_cluster: LocalCluster
) -> None:
    topics, events = publish_spread(cbus, redis_cluster, "rr")
    stop, progress = stop_after(40)
    opts = ReplayOptions(batch_size=8, checkpoint="rr-1", stop=stop)
    with pytest.raises(ReplayInterrupted):
        replay(cbus, RepublishTarget(cbus), topics=topics, by="event-time", options=opts,
               progress=progress)

    def copies() -> list[str]:
        out = []
        for t in topics:
            out += [e.metadata["chi_replay_of"] for e in cbus.store.load_by_topic(t, limit=1000)
                    if e.metadata.get("chi_replay")]
        return out

    first = len(copies())
    assert 40 <= first < len(events)
    # Each topic's run recorded its progress in that topic's slot, listed in the head.
    head = cbus.client.hgetall(cbus.keys.checkpoint("rr-1"))
    assert sorted(json.loads(head[b"shards"])) == sorted(topics)
    assert sum(int(cbus.client.hget(cbus.keys.checkpoint_shard("rr-1", t), "delivered") or 0)
               for t in topics) == first
    rest = replay(cbus, RepublishTarget(cbus), topics=topics, by="event-time",
                  options=ReplayOptions(batch_size=8, workers=4, checkpoint="rr-1"))
    assert rest.resumed and rest.total_delivered == len(events)
    assert Counter(copies()) == Counter(e.id for e in events)  # every event once
    for t in topics:  # each copy went to its own topic
        originals = [e.id for e in events if e.topic == t]
        assert [e.metadata["chi_replay_of"] for e in cbus.store.load_by_topic(t, limit=1000)
                if e.metadata.get("chi_replay")] == originals


def test_replay_command_given_one_nodes_url(
    cbus: EventBus, redis_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, ns: str
) -> None:
    topics, events = publish_spread(cbus, redis_cluster, "rc")
    with in_process_runtime(cbus, monkeypatch) as rt:
        cbus.subscribe("c-cli", topics=topics)(lambda e: None)
        rt.broker()  # registers the subscription (start="new": only a replay reaches it)
    argv = [str(CHI), "--redis-url", redis_cluster.nodes[1].url, "--namespace", ns,
            "replay", "--to", "c-cli", "--checkpoint", "rc-1", "--batch-size", "5"]
    proc = subprocess.Popen([*argv, "--rate", "100/s"], env=clean_env(), cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len(queued_ids(cbus, "c-cli")) >= 20 or proc.poll() is not None,
                   60, "20 events replayed")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert b"resume" in err
    stopped = len(queued_ids(cbus, "c-cli"))
    assert 20 <= stopped < len(events)
    rest = subprocess.run(argv, env=clean_env(), cwd=str(ROOT), capture_output=True,
                          timeout=120)
    assert rest.returncode == 0, rest.stderr
    assert f"{len(events)} delivered in total (resumed)" in (rest.stdout + rest.stderr).decode()
    assert Counter(queued_ids(cbus, "c-cli")) == Counter(e.id for e in events)

    printed = subprocess.run(
        [str(CHI), "--redis-url", redis_cluster.nodes[2].url, "--namespace", ns, "replay",
         "--print", "--checkpoint", "rc-print", *(x for t in topics for x in ("--topic", t))],
        env=clean_env(), cwd=str(ROOT), capture_output=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    lines = [msgspec.json.decode(x) for x in printed.stdout.splitlines()]
    assert sorted(x["id"] for x in lines) == sorted(e.id for e in events)
