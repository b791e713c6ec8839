"""Batch subscriptions and the archive loop on a local Redis Cluster (docs/design.md §3.4):
topics on every master, a poison event split out of its batches and dead-lettered (the
settle split per slot), and ``chi-redis archive run`` storing every event once into
PostgreSQL, its own pending entries and an undecodable entry included, then replayed from
there back onto the topics across an interruption."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support.cluster import LocalCluster, spread_topics
from support.postgres import require_postgres, unique_table
from support.processes import ROOT, clean_env
from support.runtime import Recorder, in_process_runtime
from support.waiting import stays, wait_until

from chi_redis import BatchFailed, Event, EventBus
from chi_redis.ops.archive import ARCHIVE_SUBSCRIPTION
from chi_redis.ops.archive_replay import replay_archive
from chi_redis.ops.replay import ReplayInterrupted, ReplayOptions, RepublishTarget
from chi_redis.store.postgres import PostgresEventStore

pytestmark = pytest.mark.redis


def spread_events(bus: EventBus, cluster: LocalCluster, prefix: str, n: int) -> tuple[
        list[str], list[Event]]:
    topics = spread_topics(cluster, bus.keys.stream, prefix)
    assert len({cluster.owner(bus.keys.stream(t)) for t in topics}) == 3
    return topics, [Event(type=f"{topics[i % 3]}.done", topic=topics[i % 3], data={"n": i})
                    for i in range(n)]


def test_batch_subscription_splits_and_dead_letters_poison_across_masters(
    cbus: EventBus, redis_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics, events = spread_events(cbus, redis_cluster, "cb", 48)
    poison, named = events[10].id, events[29].id  # on two different masters
    handled = Recorder()

    @cbus.subscribe("c-batch", topics=topics, batch_size=8, batch_wait_ms=50, max_retries=1,
                    min_backoff_ms=10, max_backoff_ms=30, start="earliest")
    def charge(batch: list[Event]) -> None:
        if any(e.id == poison for e in batch):
            raise ValueError("declined")
        bad = [e for e in batch if e.id == named]
        for e in batch:
            if e not in bad:
                handled.add(e.id)
        if bad:
            raise BatchFailed(bad, cause=KeyError("no card"))

    sids = cbus.publish_batch(events, chunk_size=5)
    with in_process_runtime(cbus, monkeypatch) as rt:
        rt.worker(rt.broker())
        wait_until(lambda: len(cbus.dead_letters("c-batch")) == 2, 60, "two dead letters")
        wait_until(lambda: len(handled) == len(events) - 2, 60, "the rest handled")
        assert stays(lambda: len(cbus.dead_letters("c-batch")) == 2, 0.5)
    assert handled.counts() == {e.id: 1 for e in events if e.id not in (poison, named)}
    by_event = {d.event_id: d for d in cbus.dead_letters("c-batch")}
    assert set(by_event) == {poison, named}
    assert (by_event[poison].error_type, by_event[poison].source_id) == ("ValueError", sids[10])
    assert (by_event[named].error_type, by_event[named].source_id) == ("KeyError", sids[29])
    for t in topics:  # every topic entry acked on its master
        assert cbus.client.xpending(cbus.keys.stream(t), "c-batch")["pending"] == 0


@pytest.fixture
def pg() -> Iterator[PostgresEventStore]:
    store = PostgresEventStore(require_postgres(), unique_table("carch"))
    store.init()
    try:
        yield store
    finally:
        store.drop()
        store.close()


@pytest.mark.postgres
def test_archive_run_stores_every_event_once_from_every_master(
    cbus: EventBus, redis_cluster: LocalCluster, pg: PostgresEventStore, ns: str,
    tmp_path: Path,
) -> None:
    """``chi-redis archive run`` given one node's URL, as a process: what its consumer
    held before (pending), every event published before and while it runs, an undecodable
    entry dead-lettered; SIGTERM exits 0 with nothing pending."""
    topics, events = spread_events(cbus, redis_cluster, "ca", 600)
    cbus.publish_batch(events[:300])
    held = 0
    for t in topics:  # read as "arch-a" before a crash: pending, re-read at start
        stream = cbus.keys.stream(t)
        cbus.client.xgroup_create(stream, ARCHIVE_SUBSCRIPTION, id="0")
        held += len(cbus.client.xreadgroup(ARCHIVE_SUBSCRIPTION, "arch-a", {stream: ">"},
                                           count=5)[0][1])
    assert held == 15
    bad = cbus.client.xadd(cbus.keys.stream(topics[1]), {"id": "x", "type": "ca.x"})
    config = tmp_path / "chi.yaml"
    config.write_text(
        "events:\n  store:\n    enabled: true\n    type: database\n"
        f"    database: {{dsn: '{require_postgres()}', table_name: {pg.table_name}}}\n"
        "    archive: {batch_size: 50}\n")
    env = clean_env(CHI_REDIS_URL=redis_cluster.nodes[2].url, CHI_NAMESPACE=ns,
                    CHI_CONFIG=str(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chi_redis.cli", "archive", "run", "--block-ms", "100",
         "--consumer", "arch-a"],
        env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        cbus.publish_batch(events[300:])
        wait_until(lambda: pg.count() == len(events) or proc.poll() is not None, 120,
                   "every event archived")
        wait_until(lambda: len(cbus.dead_letters(ARCHIVE_SUBSCRIPTION)) == 1, 60,
                   "the undecodable entry dead-lettered")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out.decode()
    assert b"archived" in out and b"1 dead-lettered" in out
    with psycopg.connect(require_postgres()) as conn:
        rows = conn.execute(f"SELECT id, count(*) FROM {pg.table_name} GROUP BY id").fetchall()
    assert dict(rows) == {e.id: 1 for e in events}
    [dead] = cbus.dead_letters(ARCHIVE_SUBSCRIPTION)
    assert (dead.reason, dead.source_id) == ("decode", bad.decode())
    for t in topics:
        assert cbus.client.xpending(cbus.keys.stream(t), ARCHIVE_SUBSCRIPTION)["pending"] == 0

    # Back from the archive onto the topics (one run of one topic per call, one position
    # for all): interrupted, resumed, each archived event republished once.
    cbus.client.xdel(cbus.keys.stream(topics[1]), bad)  # the stream reads below decode all
    stop, seen = threading.Event(), [0]

    def progress(k: int) -> None:
        seen[0] += k
        if seen[0] >= 100:
            stop.set()

    opts = ReplayOptions(batch_size=16, checkpoint="ca-arch", stop=stop)
    with pytest.raises(ReplayInterrupted):
        replay_archive(pg, RepublishTarget(cbus), cbus.codec, options=opts, progress=progress)
    rest = replay_archive(pg, RepublishTarget(cbus), cbus.codec,
                          options=ReplayOptions(batch_size=16, checkpoint="ca-arch"))
    assert rest.resumed and rest.total_delivered == len(events)
    copies = [e.metadata["chi_replay_of"] for t in topics
              for e in cbus.store.load_by_topic(t, limit=2000) if e.metadata.get("chi_replay")]
    assert Counter(copies) == Counter(e.id for e in events)

