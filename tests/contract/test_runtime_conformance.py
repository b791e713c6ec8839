"""Runtime conformance: one suite of behaviours every backend runs.

After Watermill's universal pub/sub tests (``pubsub/tests/test_pubsub.go``): each behaviour
is one test function taking the ``backend`` fixture, parametrised over every entry of
:data:`support.backends.BACKENDS`; a backend declares what it cannot do in its
:class:`~support.backends.Features` (with a reason for each one it lacks), and a test that
needs a feature carries ``@pytest.mark.needs("feature", ...)``: it is generated only for the
backends that have it (``pytest_generate_tests`` below), so nothing is skipped, and the
reasons say why a combination does not exist.

Backends today:

- ``fakeredis``: ``FakeRedis(version=(7, 0))`` with Lua through lupa, in-process runtime;
- ``embedded``: ``EventBus.embedded()`` (its own in-process server), its workers run as
  :class:`chi_redis.embedded.InProcessWorker` (``Session.in_process_worker``);
- ``redis``: the shared server at ``CHI_TEST_REDIS_URL`` (127.0.0.1:6379), in-process
  runtime, plus real ``dramatiq chi_redis.worker`` subprocesses where a crash is needed;
- ``redis-own-aof``: a redis-server this test starts (AOF, ``appendfsync always``), which
  may be killed with ``kill -9`` and restarted.

Adding a backend (Redis Cluster, RabbitMQ, Kafka…) is one entry:
write an ``open(ns, tmp_path)`` context manager yielding a :class:`~support.backends.Session`
(its ``bus`` in a fresh namespace, ``url`` when worker subprocesses can reach it, ``server``
when the test may kill it, ``in_process_worker`` when its workers are
:class:`~chi_redis.embedded.InProcessWorker`; override ``Session.strand`` if "a consumer
takes entries and dies" is not XREADGROUP there), build
``Backend(name, open, Features(...), marks=...)`` with a reason for every ``False``
feature, and append it to ``BACKENDS``.  Nothing here changes.

Only public API is used: ``chi_redis`` exports, ``bus.subscribe`` / ``dead_letters`` /
``redrive``, ``StreamsBroker`` (through :class:`support.Runtime` or an ``InProcessWorker``),
the replay functions and ``chi_redis.worker``.  Names are unique per test (and each test
has its own namespace).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.backends import BACKENDS, Backend, Session
from support.processes import Workers, wait_ready
from support.runtime import FAST, Recorder, Runtime, in_process_runtime, wait_groups
from support.waiting import stays, wait_until

from chi_redis import BatchFailed, Event
from chi_redis.embedded import InProcessWorker
from chi_redis.events.filters import all_of, metadata, not_, topic_is, type_is
from chi_redis.ops.replay import choose_target, replay
from chi_redis.ops.timeparse import parse_time
from chi_redis.runtime.broker import BrokerOptions, StreamsBroker
from chi_redis.runtime.subscriptions import Delivery

DEADLINE_S = 60.0  # generous: every wait here finishes in well under a second normally
QUIET_S = 0.5  # how long "nothing more arrives" is watched


class Conformance:
    """What a behaviour gets: the backend, its session and an in-process runtime on it."""

    def __init__(self, backend: Backend, session: Session, rt: Runtime, tmp: Path) -> None:
        self.backend = backend
        self.session = session
        self.rt = rt
        self.bus = session.bus
        self.tmp = tmp
        self.workers: list[InProcessWorker] = []

    def broker(self, **options: Any) -> StreamsBroker:
        """A broker with every subscription registered so far (groups created), not running.

        On a backend with ``in_process_worker`` it is an :class:`InProcessWorker`'s.
        """
        if not self.session.in_process_worker:
            return self.rt.broker(**options)
        worker = InProcessWorker(self.bus, options=BrokerOptions(**{**FAST, **options}))
        self.workers.append(worker)
        return worker.broker

    def run(self, broker: StreamsBroker, threads: int = 4) -> None:
        """Start a worker with ``threads`` threads on ``broker``."""
        for worker in self.workers:
            if worker.broker is broker:
                worker.threads = threads
                worker.start()
                return
        self.rt.worker(broker, threads=threads)

    def start(self, threads: int = 4, **options: Any) -> StreamsBroker:
        """A broker with every subscription registered so far, and a worker on it."""
        broker = self.broker(**options)
        self.run(broker, threads)
        return broker

    def close(self) -> None:
        """Stop the in-process workers; none may leave a thread behind."""
        for worker in self.workers:
            worker.close()
        assert [t for w in self.workers for t in w.alive_threads()] == []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``backend`` over every backend that has what the test ``needs``."""
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("needs")
    needed: tuple[str, ...] = marker.args if marker else ()
    specs = [b for b in BACKENDS if b.features.missing(*needed) is None]
    assert specs, f"no backend has {needed}"
    metafunc.parametrize("backend", [b.param() for b in specs], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest, ns: str, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Conformance]:
    spec: Backend = request.param
    with spec.open(ns, tmp_path) as session, in_process_runtime(
        session.bus, monkeypatch, kind=spec.name
    ) as rt:
        conformance = Conformance(spec, session, rt, tmp_path)
        try:
            yield conformance
        finally:
            conformance.close()


def ev(type_: str, n: int, **fields: Any) -> Event:
    return Event(type=type_, data={"n": n}, **fields)


def record(rec: Recorder) -> Any:
    """A handler that records ``data["n"]``."""

    def handle(event: Event) -> None:
        rec.add(event.data["n"])

    return handle


# delivery ------------------------------------------------------------------------------------
def test_publish_and_receive(backend: Conformance) -> None:
    got = Recorder()

    @backend.bus.subscribe("recv-basic", types=["parcel.sent"])
    def handle(event: Event, delivery: Delivery) -> None:
        got.add((event.id, event.data, delivery.subscription, delivery.attempt))

    broker = backend.start()
    events = [ev("parcel.sent", i) for i in range(5)]
    backend.rt.publish(*events)
    wait_until(lambda: len(got) == 5, DEADLINE_S, "five events received")
    broker.join("recv-basic", timeout=int(DEADLINE_S * 1000))
    assert sorted(got.items(), key=lambda t: t[1]["n"]) == [
        (e.id, {"n": i}, "recv-basic", 1) for i, e in enumerate(events)]


def test_fan_out_to_several_subscriptions(backend: Conformance) -> None:
    names = ["fan-a", "fan-b", "fan-c"]
    got = {name: Recorder() for name in names}
    for name in names:
        backend.bus.subscribe(name, types=["bell.rung"])(record(got[name]))
    broker = backend.start()
    backend.bus.publish_batch([ev("bell.rung", i) for i in range(20)])
    for name in names:
        wait_until(lambda name=name: len(got[name]) == 20, DEADLINE_S, f"{name}: 20 events")
        broker.join(name, timeout=int(DEADLINE_S * 1000))
    assert stays(lambda: all(len(r) == 20 for r in got.values()), QUIET_S)
    for name in names:  # each exactly once
        assert sorted(got[name].items()) == list(range(20)), name


def test_filters_deliver_matches_and_ack_the_rest_unseen(backend: Conformance) -> None:
    got = {name: Recorder() for name in ("flt-glob", "flt-topic", "flt-meta")}
    backend.bus.subscribe("flt-glob", types=["shop.order.*"])(record(got["flt-glob"]))
    backend.bus.subscribe("flt-topic", topics=["shop", "mail"],
                          filter=topic_is("mail"))(record(got["flt-topic"]))
    backend.bus.subscribe("flt-meta", types=["shop.*", "shop.order.*"], filter=all_of(
        metadata(region="eu"), not_(type_is("shop.order.cancelled"))))(record(got["flt-meta"]))
    broker = backend.start()
    backend.bus.publish_batch([
        ev("shop.order.placed", 0, metadata={"region": "eu"}),
        ev("shop.order.cancelled", 1, metadata={"region": "eu"}),
        ev("shop.opened", 2, metadata={"region": "eu"}),
        ev("shop.order.placed", 3, metadata={"region": "us"}),
        ev("mail.sent", 4, metadata={"region": "eu"}),
        ev("shop.closed", 5),
    ])
    for name in got:  # join: nothing pending, nothing unread — the non-matching were acked
        broker.join(name, timeout=int(DEADLINE_S * 1000))
    assert stays(lambda: sum(len(r) for r in got.values()) == 6, QUIET_S)
    assert sorted(got["flt-glob"].items()) == [0, 1, 3]
    assert sorted(got["flt-topic"].items()) == [4]
    assert sorted(got["flt-meta"].items()) == [0, 2]


# failures -------------------------------------------------------------------------------------
def test_retries_then_success(backend: Conformance) -> None:
    attempts = Recorder()

    @backend.bus.subscribe("retry-ok", types=["card.charged"], max_retries=3,
                           min_backoff_ms=10, max_backoff_ms=40)
    def flaky(event: Event, delivery: Delivery) -> None:
        attempts.add(delivery.attempt)
        if delivery.attempt < 3:
            raise RuntimeError("not yet")

    broker = backend.start()
    backend.rt.publish(ev("card.charged", 1))
    wait_until(lambda: attempts.items() == [1, 2, 3], DEADLINE_S, "three attempts")
    broker.join("retry-ok", timeout=int(DEADLINE_S * 1000))
    assert stays(lambda: attempts.items() == [1, 2, 3], QUIET_S)
    assert backend.bus.dead_letters("retry-ok") == []


def test_dead_letter_after_exhausting_retries(backend: Conformance) -> None:
    calls = Recorder()

    @backend.bus.subscribe("dl-poison", types=["card.charged"], max_retries=2,
                           min_backoff_ms=10, max_backoff_ms=30)
    def poison(event: Event) -> None:
        calls.add(event.id)
        raise ValueError("card declined")

    broker = backend.start()
    event = ev("card.charged", 1)
    (sid,) = backend.rt.publish(event)
    wait_until(lambda: backend.bus.dead_letters("dl-poison"), DEADLINE_S, "a dead letter")
    broker.join("dl-poison", timeout=int(DEADLINE_S * 1000))
    (dl,) = backend.bus.dead_letters("dl-poison")
    assert dl.reason == "retries_exhausted"
    assert dl.error_type == "ValueError" and "card declined" in dl.error
    assert dl.subscription == "dl-poison" and dl.kind == "event"
    assert dl.event_id == event.id and dl.type == "card.charged" and dl.topic == "card"
    assert dl.source_stream == backend.bus.keys.stream("card") and dl.source_id == sid
    assert dl.attempts == 3 and dl.deliveries >= 1
    assert 0 < dl.first_failure_ms <= dl.last_failure_ms
    assert stays(lambda: len(calls) == 3, QUIET_S)  # 1 + max_retries, then never again


def test_redrive_a_dead_letter_is_handled_once(backend: Conformance) -> None:
    fixed = {"yes": False}
    runs = Recorder()

    @backend.bus.subscribe("dl-fixme", types=["card.charged"], max_retries=0)
    def fixme(event: Event, delivery: Delivery) -> None:
        if not fixed["yes"]:
            raise RuntimeError("payment service down")
        runs.add((event.id, delivery.stream, delivery.entry_id))

    broker = backend.start()
    event = ev("card.charged", 1)
    (sid,) = backend.rt.publish(event)
    wait_until(lambda: backend.bus.dead_letters("dl-fixme"), DEADLINE_S, "a dead letter")
    broker.join("dl-fixme", timeout=int(DEADLINE_S * 1000))
    fixed["yes"] = True
    assert backend.bus.redrive("dl-fixme") == 1
    wait_until(lambda: len(runs) == 1, DEADLINE_S, "the redriven event handled")
    assert backend.bus.redrive("dl-fixme") == 0  # moved already: nothing to redrive twice
    broker.join("dl-fixme", timeout=int(DEADLINE_S * 1000))
    assert stays(lambda: len(runs) == 1, QUIET_S)
    assert runs.items() == [(event.id, backend.bus.keys.stream("card"), sid)]  # provenance
    assert backend.bus.dead_letters("dl-fixme") == []


# crashes --------------------------------------------------------------------------------------
@pytest.mark.needs("server_time_reclaim")
def test_reclaim_after_a_consumer_dies(backend: Conformance) -> None:
    """A consumer that took entries and died (never acked, never handed back): a live worker
    claims them once idle past the lease, and each runs once."""
    got = Recorder()
    backend.bus.subscribe("reclaim-jobs", types=["job.run"])(record(got))
    broker = backend.broker(lease_ms=900, reclaim_interval_ms=100)
    backend.bus.publish_batch([ev("job.run", i) for i in range(5)])
    assert backend.session.strand("reclaim-jobs", "job", 5) == 5
    backend.run(broker, threads=2)
    wait_until(lambda: len(got) == 5, DEADLINE_S, "stranded entries reclaimed and handled")
    broker.join("reclaim-jobs", timeout=int(DEADLINE_S * 1000))
    assert stays(lambda: sorted(got.items()) == list(range(5)), QUIET_S)


@pytest.mark.needs("multi_process")
def test_reclaim_after_a_worker_process_is_killed(backend: Conformance) -> None:
    """``kill -9`` of a ``dramatiq chi_redis.worker`` process in the middle of handlers: a
    second worker process finishes everything; what the dead one held runs again."""
    assert backend.session.url is not None
    ns, client, bus = backend.bus.namespace, backend.session.client, backend.bus
    workers = Workers(backend.tmp, backend.session.url, ns)
    try:
        first = workers.start("runtime.proc_slow", threads=2)
        wait_ready(first)
        wait_groups(client, bus, {"slow": ["slow"]})
        events = [Event(type="slow.job", data={"n": i, "sleep_ms": 800}) for i in range(6)]
        bus.publish_batch(events)
        victim = int(wait_until(lambda: next(iter(client.hvals(f"{ns}:t:start-pid")), None),
                                DEADLINE_S, "a handler started"))
        assert victim in first.children()  # the forked worker child, not the test
        os.kill(victim, signal.SIGKILL)
        held = {k.decode() for k, v in client.hgetall(f"{ns}:t:start-pid").items()
                if int(v) == victim}
        wait_ready(workers.start("runtime.proc_slow", threads=2))
        wait_until(lambda: client.hlen(f"{ns}:t:done") == len(events), DEADLINE_S * 2,
                   "every event finished after the kill", interval=0.1)
    finally:
        workers.stop()
    done_by = {k.decode(): int(v) for k, v in client.hgetall(f"{ns}:t:done-pid").items()}
    starts = {k.decode(): int(v) for k, v in client.hgetall(f"{ns}:t:starts").items()}
    assert set(done_by) == {e.id for e in events}  # nothing lost
    unfinished = {eid for eid in held if done_by[eid] != victim}
    assert unfinished, "the victim died with handlers in flight"
    assert all(starts[eid] >= 2 for eid in unfinished)
    assert bus.dead_letters("slow") == []


@pytest.mark.needs("kill_and_restart", "persistence")
def test_events_survive_a_server_kill_and_restart(backend: Conformance) -> None:
    """Published, then the server is killed (``kill -9``) before any worker ran: after the
    restart every event is still there and is handled exactly once."""
    server = backend.session.server
    assert server is not None
    got = Recorder()
    backend.bus.subscribe("restart-jobs", types=["job.run"])(record(got))
    broker = backend.broker()  # groups created before the kill
    backend.bus.publish_batch([ev("job.run", i) for i in range(10)])
    server.restart()
    backend.run(broker)
    wait_until(lambda: len(got) == 10, DEADLINE_S, "events handled after the restart")
    broker.join("restart-jobs", timeout=int(DEADLINE_S * 1000))
    assert stays(lambda: sorted(got.items()) == list(range(10)), QUIET_S)


# history and order ---------------------------------------------------------------------------
@pytest.mark.needs("replay")
def test_replay_a_range_into_one_subscription_only(backend: Conformance) -> None:
    sids = backend.bus.publish_batch([ev("ledger.posted", i) for i in range(10)])
    # registered after the events (start="new"): only the replay reaches them
    seen = {name: Recorder() for name in ("replay-audit", "replay-billing")}
    for name, rec in seen.items():
        backend.bus.subscribe(name, types=["ledger.*"])(
            lambda e, d, rec=rec: rec.add((e.data["n"], d.replay)))
    broker = backend.start()
    target, topics = choose_target(backend.bus, to_sub="replay-audit")
    report = replay(backend.bus, target, topics=topics, since=parse_time(sids[3]),
                    until=parse_time(sids[6]))
    assert report.delivered == 4
    wait_until(lambda: len(seen["replay-audit"]) == 4, DEADLINE_S, "the replayed range")
    broker.join("replay-audit", timeout=int(DEADLINE_S * 1000))
    assert stays(lambda: len(seen["replay-audit"]) == 4, QUIET_S)
    assert sorted(seen["replay-audit"].items()) == [(i, True) for i in range(3, 7)]
    assert seen["replay-billing"].items() == []  # the other subscription is untouched


@pytest.mark.needs("guaranteed_order")
def test_ordering_within_one_consumer(backend: Conformance) -> None:
    got = Recorder()
    backend.bus.subscribe("ordered", types=["tick.tocked"])(record(got))
    broker = backend.start(threads=1)
    for i in range(50):  # one at a time, so publish order is the stream's order
        backend.bus.publish(ev("tick.tocked", i))
    wait_until(lambda: len(got) == 50, DEADLINE_S, "50 events")
    broker.join("ordered", timeout=int(DEADLINE_S * 1000))
    assert got.items() == list(range(50))


def test_idempotent_publish_writes_once(backend: Conformance) -> None:
    got = Recorder()
    backend.bus.subscribe("idem", types=["pay.done"])(record(got))
    broker = backend.start()
    event = ev("pay.done", 1)
    first, again = backend.bus.publish(event), backend.bus.publish(event)
    keyed = [backend.bus.publish(ev("pay.done", n), idempotency_key="k-1") for n in (2, 3)]
    assert first == again and keyed[0] == keyed[1] and first != keyed[0]
    wait_until(lambda: len(got) == 2, DEADLINE_S, "two distinct events")
    broker.join("idem", timeout=int(DEADLINE_S * 1000))
    assert stays(lambda: sorted(got.items()) == [1, 2], QUIET_S)
    assert [e.data["n"] for e in backend.bus.store.load_by_topic("pay")] == [1, 2]


# batch subscriptions (docs/design.md §5.10) -----------------------------------------------------
def record_batches(rec: Recorder) -> Any:
    """A batch handler that records each batch's ``data["n"]`` values."""

    def handle(events: list[Event]) -> None:
        rec.add([e.data["n"] for e in events])

    return handle


@pytest.mark.needs("batch")
def test_batches_of_up_to_batch_size_each_event_once(backend: Conformance) -> None:
    got = Recorder()
    backend.bus.subscribe("batch-recv", types=["parcel.sent"], batch_size=8,
                          batch_wait_ms=50)(record_batches(got))
    broker = backend.broker()
    backend.bus.publish_batch([ev("parcel.sent", i) for i in range(30)])
    backend.run(broker)
    wait_until(lambda: sum(len(b) for b in got.items()) == 30, DEADLINE_S, "30 events")
    broker.join("batch-recv", timeout=int(DEADLINE_S * 1000))
    assert stays(lambda: sum(len(b) for b in got.items()) == 30, QUIET_S)
    assert sorted(n for b in got.items() for n in b) == list(range(30))
    assert max(len(b) for b in got.items()) == 8


@pytest.mark.needs("batch")
def test_batch_poison_event_isolated_and_partial_success(backend: Conformance) -> None:
    handled = Recorder()

    @backend.bus.subscribe("batch-poison", types=["card.charged"], batch_size=8,
                           batch_wait_ms=50, max_retries=1, min_backoff_ms=10,
                           max_backoff_ms=30)
    def charge(events: list[Event]) -> None:
        if any(e.data["n"] == 5 for e in events):
            raise ValueError("card 5 declined")
        bad = [e for e in events if e.data["n"] == 2]
        for e in events:
            if e not in bad:
                handled.add(e.data["n"])
        if bad:
            raise BatchFailed(bad, cause=KeyError("no card"))

    broker = backend.broker()
    events = [ev("card.charged", i) for i in range(8)]
    sids = backend.bus.publish_batch(events)
    backend.run(broker)
    wait_until(lambda: len(backend.bus.dead_letters("batch-poison")) == 2, DEADLINE_S,
               "two dead letters")
    broker.join("batch-poison", timeout=int(DEADLINE_S * 1000))
    assert stays(lambda: len(handled) == 6, QUIET_S)
    assert sorted(handled.items()) == [0, 1, 3, 4, 6, 7]  # each once
    by_event = {d.event_id: d for d in backend.bus.dead_letters("batch-poison")}
    assert set(by_event) == {events[2].id, events[5].id}  # only the two that failed
    poison, named = by_event[events[5].id], by_event[events[2].id]
    assert (poison.error_type, poison.source_id) == ("ValueError", sids[5])
    assert (named.error_type, named.source_id) == ("KeyError", sids[2])
    assert poison.reason == named.reason == "retries_exhausted"


@pytest.mark.needs("server_time_reclaim", "batch")
def test_batch_reclaim_after_a_consumer_dies(backend: Conformance) -> None:
    got = Recorder()
    backend.bus.subscribe("batch-reclaim", types=["job.run"], batch_size=4,
                          batch_wait_ms=50)(record_batches(got))
    broker = backend.broker(lease_ms=900, reclaim_interval_ms=100)
    backend.bus.publish_batch([ev("job.run", i) for i in range(10)])
    assert backend.session.strand("batch-reclaim", "job", 6) == 6
    backend.run(broker, threads=2)
    wait_until(lambda: sum(len(b) for b in got.items()) == 10, DEADLINE_S,
               "stranded and unread entries handled")
    broker.join("batch-reclaim", timeout=int(DEADLINE_S * 1000))
    assert stays(lambda: sorted(n for b in got.items() for n in b) == list(range(10)), QUIET_S)
