"""The embedded bus: ``EventBus.embedded()`` and its in-process worker, no server at all.

Everything here runs on fakeredis servers of this process (one per bus); the conformance
suite (tests/contract/test_runtime_conformance.py, backend ``embedded``) runs every shared
behaviour on it as well.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import dramatiq.broker
import pytest
from support import Recorder, stays, wait_until

from chi_redis import ChiError, Event, EventBus
from chi_redis.backend.memory import embedded_async_client, is_embedded
from chi_redis.embedded import DrainTimeout, InProcessWorker
from chi_redis.ops.replay import choose_target, replay
from chi_redis.ops.stats import collect
from chi_redis.ops.timeparse import parse_time
from chi_redis.publish.aio import AsyncEventBus
from chi_redis.runtime.broker import BrokerOptions
from chi_redis.runtime.subscriptions import Delivery

DEADLINE_S = 60.0
QUICK = BrokerOptions(reclaim_interval_ms=200)


@pytest.fixture
def bus() -> Iterator[EventBus]:
    bus = EventBus.embedded(namespace="app")
    yield bus
    bus.close()


def ev(type_: str, n: int) -> Event:
    return Event(type=type_, data={"n": n})


def test_an_embedded_bus_is_its_own_server(bus: EventBus) -> None:
    assert is_embedded(bus.client) and bus.namespace == "app"
    assert repr(bus) == "EventBus('redis://embedded/0', namespace='app')"
    assert bus.client.ping() is True
    assert EventBus.embedded(idempotency_ttl_ms=5_000).idempotency_ttl_ms == 5_000


def test_handles_retries_with_backoff_and_dead_letters(bus: EventBus) -> None:
    handled, attempts, poisoned = Recorder(), Recorder(), Recorder()

    @bus.subscribe("ok", types=["job.*"])
    def ok(event: Event) -> None:
        handled.add(event.data["n"])

    @bus.subscribe("flaky", types=["job.run"], max_retries=3, min_backoff_ms=300,
                   max_backoff_ms=10_000)
    def flaky(event: Event, delivery: Delivery) -> None:
        attempts.add((delivery.attempt, time.monotonic()))
        if delivery.attempt < 3:
            raise RuntimeError("not yet")

    @bus.subscribe("poison", types=["job.run"], max_retries=1, min_backoff_ms=10)
    def poison(event: Event) -> None:
        poisoned.add(event.id)
        raise ValueError("never")

    with InProcessWorker(bus, threads=3, options=QUICK) as worker:
        event = ev("job.run", 1)
        (sid,) = bus.publish_batch([event])
        worker.drain(DEADLINE_S)
        assert handled.items() == [1]
        got = attempts.items()
        assert [a for a, _ in got] == [1, 2, 3]
        gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(got)]
        assert all(gap >= 0.3 for gap in gaps), gaps  # each retry waited its backoff
        assert bus.dead_letters("flaky") == []
        (dead,) = bus.dead_letters("poison")
        assert (dead.reason, dead.attempts, dead.event_id) == ("retries_exhausted", 2, event.id)
        assert (dead.source_stream, dead.source_id) == (bus.keys.stream("job"), sid)
        assert len(poisoned) == 2
        assert worker.busy() == []


def test_replay_into_one_subscription(bus: EventBus) -> None:
    sids = bus.publish_batch([ev("ledger.posted", i) for i in range(6)])
    seen = {name: Recorder() for name in ("audit", "billing")}
    for name, rec in seen.items():  # start="new": only the replay reaches the old events
        bus.subscribe(name, types=["ledger.*"])(lambda e, d, rec=rec: rec.add(
            (e.data["n"], d.replay)))
    with InProcessWorker(bus, options=QUICK) as worker:
        target, topics = choose_target(bus, to_sub="audit")
        report = replay(bus, target, topics=topics, since=parse_time(sids[1]),
                        until=parse_time(sids[3]))
        assert report.delivered == 3
        worker.drain(DEADLINE_S)
    assert sorted(seen["audit"].items()) == [(1, True), (2, True), (3, True)]
    assert seen["billing"].items() == []


def test_queries_and_stats_work_on_it(bus: EventBus) -> None:
    bus.subscribe("count", types=["order.*"])(lambda e: None)
    events = [ev("order.placed", i) for i in range(5)]
    with InProcessWorker(bus, options=QUICK) as worker:
        bus.publish_batch(events)
        worker.drain(DEADLINE_S)
        stats = collect(bus)
    loaded = bus.store.load(events[2].id)
    assert loaded is not None and loaded.data == {"n": 2}
    assert [e.id for e in bus.store.load_by_topic("order", offset=1, limit=2)] == [
        events[1].id, events[2].id]
    assert bus.store.topics() == ["order"]
    (topic,) = stats.topics
    assert (topic.topic, topic.length) == ("order", 5)
    (sub,) = stats.subscriptions
    assert (sub.name, sub.lag, sub.pending, sub.delayed, sub.dead_letters) == ("count", 0, 0, 0, 0)


def test_the_async_publisher_writes_to_the_same_server(bus: EventBus) -> None:
    async def publish() -> str:
        abus = AsyncEventBus(embedded_async_client(bus.client), namespace=bus.namespace)
        try:
            return await abus.publish(ev("metric.sampled", 7))
        finally:
            await abus.close()

    sid = asyncio.run(publish())
    (event,) = bus.store.load_by_topic("metric")
    assert event.data == {"n": 7} and sid


def test_two_embedded_buses_do_not_see_each_other() -> None:
    first, second = EventBus.embedded(), EventBus.embedded()  # same namespace "chi"
    got = {"first": Recorder(), "second": Recorder()}
    first.subscribe("audit", types=["user.*"])(lambda e: got["first"].add(e.data["n"]))
    second.subscribe("audit", types=["user.*"])(lambda e: got["second"].add(e.data["n"]))
    with InProcessWorker(first, options=QUICK) as w1, \
            InProcessWorker(second, options=QUICK) as w2:
        first.publish_batch([ev("user.seen", i) for i in range(3)])
        second.publish(ev("user.seen", 100))
        w1.drain(DEADLINE_S)
        w2.drain(DEADLINE_S)
        assert stays(lambda: len(got["first"]) == 3 and len(got["second"]) == 1, 0.3)
    assert sorted(got["first"].items()) == [0, 1, 2] and got["second"].items() == [100]
    assert len(first.store.load_by_topic("user")) == 3
    assert len(second.store.load_by_topic("user")) == 1


def test_a_subscription_registered_while_running_is_served(bus: EventBus) -> None:
    got = Recorder()
    with InProcessWorker(bus, options=QUICK) as worker:
        bus.subscribe("late", types=["user.*"])(lambda e: got.add(e.data["n"]))
        bus.publish(ev("user.seen", 1))
        wait_until(lambda: got.items() == [1], DEADLINE_S, "the late subscription ran")
        worker.drain(DEADLINE_S)


def test_close_stops_every_thread_and_detaches(bus: EventBus) -> None:
    bus.subscribe("a", types=["user.*"])(lambda e: None)
    bus.subscribe("b", types=["order.*"])(lambda e: None)
    # Dramatiq's TimeLimit watchdog runs until the process exits: one, started by the first
    # worker of the process.  A warm-up worker starts it if no test did yet.
    InProcessWorker(EventBus.embedded()).start().close()
    before = set(threading.enumerate())
    previous = dramatiq.broker.global_broker
    worker = InProcessWorker(bus, threads=4, options=QUICK)
    with worker:
        assert worker.running and dramatiq.get_broker() is worker.broker
        assert bus.broker is worker.broker
        started = set(threading.enumerate()) - before
        assert len(started) >= 4 + 2  # worker threads and one consumer per queue
        bus.publish(ev("user.seen", 1))
        worker.drain(DEADLINE_S)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 5  # idle consumers wake every 250 ms
    assert worker.alive_threads() == [] and not worker.running
    assert not [t for t in started if t.is_alive()]
    assert dramatiq.broker.global_broker is previous
    assert bus.broker is None  # later subscriptions are not declared on a stopped broker
    bus.subscribe("c", types=["user.*"])(lambda e: None)
    assert set(threading.enumerate()) - before == set()
    worker.close()  # idempotent
    with pytest.raises(RuntimeError, match="starts once"):
        worker.start()
    for _ in range(3):  # workers come and go: no thread stays behind
        InProcessWorker(EventBus.embedded(), threads=2).start().close()
    assert set(threading.enumerate()) - before == set()


def test_drain_names_the_busy_subscriptions_when_it_gives_up(bus: EventBus) -> None:
    release = threading.Event()
    bus.subscribe("slow", types=["job.*"])(lambda e: release.wait(DEADLINE_S))
    with InProcessWorker(bus, options=QUICK) as worker:
        bus.publish(ev("job.run", 1))
        with pytest.raises(DrainTimeout, match=r"still busy after 0\.3 s: slow"):
            worker.drain(0.3)
        release.set()
        worker.drain(DEADLINE_S)
    assert issubclass(DrainTimeout, ChiError)


def _fresh(code: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_without_the_extra_embedded_raises_a_chi_error_naming_it() -> None:
    got = _fresh("""
        import json, sys
        sys.modules["lupa"] = None  # as if `pip install chi-redis` without [embedded]
        from chi_redis import ChiError, EventBus
        try:
            EventBus.embedded()
        except ChiError as exc:
            print(json.dumps({"error": str(exc)}))
    """)
    assert got["error"] == (
        "the embedded bus needs the optional extra 'embedded' (lupa is not installed):"
        " pip install 'chi-redis[embedded]'")


def test_importing_the_package_and_the_embedded_modules_loads_no_fakeredis() -> None:
    got = _fresh("""
        import json, sys
        import chi_redis, chi_redis.embedded, chi_redis.testing
        chi_redis.EventBus
        print(json.dumps({"loaded": sorted(m for m in sys.modules
                                           if m.split(".")[0] in ("fakeredis", "lupa"))}))
    """)
    assert got["loaded"] == []


def test_a_config_with_bus_type_memory_gives_an_embedded_bus_and_its_worker(tmp_path: Any) -> None:
    from chi_redis.config import bus_from_config, load_config

    path = tmp_path / "events.yaml"
    path.write_text(textwrap.dedent("""\
        events:
          namespace: cfgmem
          bus:
            type: memory
            worker_count: 3
          worker:
            lease_ms: 7000
            max_deliveries: 4
    """))
    config = load_config(path, {})
    bus = bus_from_config(config)
    assert is_embedded(bus.client) and bus.namespace == "cfgmem"
    seen = Recorder()

    @bus.subscribe("cfg-seen", types=["cfg.happened"], max_retries=0)
    def handler(event: Event) -> None:
        seen.add(event.data["n"])

    with InProcessWorker.from_config(bus, config) as worker:
        assert worker.threads == 3
        assert worker.broker.options.lease_ms == 7000
        assert worker.broker.options.max_deliveries == 4
        bus.publish_batch([Event(type="cfg.happened", data={"n": n}) for n in range(5)])
        wait_until(lambda: sorted(seen.items()) == list(range(5)), message="all five handled")
