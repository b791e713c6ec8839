"""Runtime conformance, part 2: crashes (a consumer or a worker process dies, a server is
killed), history (replay, idempotent publish), order and batch subscriptions, on every
backend that has what each needs (the harness: tests/support/conformance.py).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from support.conformance import QUIET_S, Conformance, ev, record
from support.processes import WorkerProcess
from support.runtime import Recorder
from support.waiting import stays, wait_until

from chi_redis import BatchFailed, Event
from chi_redis.ops.replay import choose_target, replay
from chi_redis.ops.timeparse import parse_time
from chi_redis.runtime.subscriptions import Delivery

DEADLINE_S = 60.0  # generous: every wait here finishes in well under a second normally


# crashes --------------------------------------------------------------------------------------
@pytest.mark.needs("reclaim")
def test_reclaim_after_a_consumer_dies(backend: Conformance) -> None:
    """A consumer that took entries and died (never acked, never handed them back): a live
    worker gets them (Redis: claims them once idle past the lease; RabbitMQ: they return
    when the dead consumer's connection closes; Kafka: the group reads again from its last
    commit), and each runs once."""
    got = Recorder()
    backend.bus.subscribe("reclaim-jobs", types=["job.run"])(record(got))
    backend.prepare(lease_ms=900, reclaim_interval_ms=100)
    backend.bus.publish_batch([ev("job.run", i) for i in range(5)])
    assert backend.session.strand("reclaim-jobs", "job", 5) == 5
    backend.run(threads=2)
    wait_until(lambda: len(got) == 5, DEADLINE_S, "stranded entries reclaimed and handled")
    backend.join("reclaim-jobs")
    assert stays(lambda: sorted(got.items()) == list(range(5)), QUIET_S)


def _notes(path: Path) -> list[tuple[str, str, int]]:
    """``(start|done, event id, pid)`` lines of tests/contract/proc_notes.py."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(w, e, int(p)) for w, e, p in (line.split() for line in lines)]


@pytest.mark.needs("multi_process")
def test_at_least_once_after_a_worker_process_is_killed(backend: Conformance) -> None:
    """``kill -9`` of a worker process (``dramatiq chi_redis.worker`` or ``chi-redis worker``
    on a bridge) in the middle of handlers: a second worker process finishes everything;
    what the dead one held runs again."""
    session, notes = backend.session, backend.tmp / "notes"
    procs: list[WorkerProcess] = []

    def worker() -> WorkerProcess:
        proc = session.worker_process("contract.proc_notes", 2,
                                      backend.tmp / f"worker-{len(procs)}.log",
                                      CONFORMANCE_NOTES=str(notes))
        procs.append(proc)
        session.wait_ready(proc, {"slow": ["slow"]})
        return proc

    try:
        first = worker()
        events = [Event(type="slow.job", data={"n": i, "sleep_ms": 800}) for i in range(6)]
        backend.bus.publish_batch(events)
        victim = int(wait_until(lambda: next((p for w, _, p in _notes(notes) if w == "start"),
                                             None), DEADLINE_S, "a handler started"))
        assert victim == first.pid or victim in first.children()  # not the test
        os.kill(victim, signal.SIGKILL)
        held = {e for w, e, p in _notes(notes) if w == "start" and p == victim}
        worker()
        wait_until(lambda: {e for w, e, _ in _notes(notes) if w == "done"}
                   >= {e.id for e in events}, DEADLINE_S * 2,
                   "every event finished after the kill", interval=0.1)
    finally:
        for proc in procs:  # SIGTERM to all first: they shut down side by side
            proc.terminate()
        for proc in procs:
            proc.stop()
    done_by = {e: p for w, e, p in _notes(notes) if w == "done"}
    starts = {e: sum(1 for w, x, _ in _notes(notes) if w == "start" and x == e) for e in done_by}
    assert set(done_by) == {e.id for e in events}  # nothing lost
    unfinished = {e for e in held if done_by[e] != victim}
    assert unfinished, "the victim died with handlers in flight"
    assert all(starts[e] >= 2 for e in unfinished)
    assert backend.dead_letters("slow") == []


@pytest.mark.needs("kill_and_restart", "persistence")
def test_events_survive_a_server_kill_and_restart(backend: Conformance) -> None:
    """Published, then the server is killed (``kill -9``) before any worker ran: after the
    restart every event is still there and is handled exactly once."""
    server = backend.session.server
    assert server is not None
    got = Recorder()
    backend.bus.subscribe("restart-jobs", types=["job.run"])(record(got))
    backend.prepare()  # groups created before the kill
    backend.bus.publish_batch([ev("job.run", i) for i in range(10)])
    server.restart()
    backend.run()
    wait_until(lambda: len(got) == 10, DEADLINE_S, "events handled after the restart")
    backend.join("restart-jobs")
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
    backend.start()
    target, topics = choose_target(backend.bus, to_sub="replay-audit")
    report = replay(backend.bus, target, topics=topics, since=parse_time(sids[3]),
                    until=parse_time(sids[6]))
    assert report.delivered == 4
    wait_until(lambda: len(seen["replay-audit"]) == 4, DEADLINE_S, "the replayed range")
    backend.join("replay-audit")
    assert stays(lambda: len(seen["replay-audit"]) == 4, QUIET_S)
    assert sorted(seen["replay-audit"].items()) == [(i, True) for i in range(3, 7)]
    assert seen["replay-billing"].items() == []  # the other subscription is untouched


@pytest.mark.needs("guaranteed_order")
def test_ordering_within_one_consumer(backend: Conformance) -> None:
    got = Recorder()
    backend.bus.subscribe("ordered", types=["tick.tocked"])(record(got))
    backend.start(threads=1)
    for i in range(50):  # one at a time, so publish order is the stream's order
        backend.bus.publish(ev("tick.tocked", i))
    wait_until(lambda: len(got) == 50, DEADLINE_S, "50 events")
    backend.join("ordered")
    assert got.items() == list(range(50))


@pytest.mark.needs("key_order")
def test_ordering_per_partition_key_with_several_consumers(backend: Conformance) -> None:
    got = Recorder()

    @backend.bus.subscribe("by-key", types=["acct.moved"])
    def handle(event: Event, delivery: Delivery) -> None:
        got.add((event.metadata["partition_key"], event.data["n"]))

    backend.start(threads=3)
    keys = [f"acct-{k}" for k in range(6)]
    backend.bus.publish_batch([ev("acct.moved", n, metadata={"partition_key": k})
                               for n in range(15) for k in keys])
    wait_until(lambda: len(got) == 90, DEADLINE_S, "90 events")
    backend.join("by-key")
    for k in keys:  # in publish order, once each
        assert [n for key, n in got.items() if key == k] == list(range(15)), k


@pytest.mark.needs("idempotent_publish")
def test_idempotent_publish_writes_once(backend: Conformance) -> None:
    got = Recorder()
    backend.bus.subscribe("idem", types=["pay.done"])(record(got))
    backend.start()
    event = ev("pay.done", 1)
    first, again = backend.bus.publish(event), backend.bus.publish(event)
    keyed = [backend.bus.publish(ev("pay.done", n), idempotency_key="k-1") for n in (2, 3)]
    assert first == again and keyed[0] == keyed[1] and first != keyed[0]
    wait_until(lambda: len(got) == 2, DEADLINE_S, "two distinct events")
    backend.join("idem")
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
    backend.prepare()
    backend.bus.publish_batch([ev("parcel.sent", i) for i in range(30)])
    backend.run()
    wait_until(lambda: sum(len(b) for b in got.items()) == 30, DEADLINE_S, "30 events")
    backend.join("batch-recv")
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

    backend.prepare()
    events = [ev("card.charged", i) for i in range(8)]
    sids = backend.bus.publish_batch(events)
    backend.run()
    wait_until(lambda: len(backend.dead_letters("batch-poison")) == 2, DEADLINE_S,
               "two dead letters")
    backend.join("batch-poison")
    assert stays(lambda: len(handled) == 6, QUIET_S)
    assert sorted(handled.items()) == [0, 1, 3, 4, 6, 7]  # each once
    by_event = {d.event_id: d for d in backend.dead_letters("batch-poison")}
    assert set(by_event) == {events[2].id, events[5].id}  # only the two that failed
    poison, named = by_event[events[5].id], by_event[events[2].id]
    assert (poison.error_type, poison.source_id) == ("ValueError", sids[5])
    assert (named.error_type, named.source_id) == ("KeyError", sids[2])
    assert poison.reason == named.reason == "retries_exhausted"


@pytest.mark.needs("reclaim", "batch")
def test_batch_reclaim_after_a_consumer_dies(backend: Conformance) -> None:
    got = Recorder()
    backend.bus.subscribe("batch-reclaim", types=["job.run"], batch_size=4,
                          batch_wait_ms=50)(record_batches(got))
    backend.prepare(lease_ms=900, reclaim_interval_ms=100)
    backend.bus.publish_batch([ev("job.run", i) for i in range(10)])
    assert backend.session.strand("batch-reclaim", "job", 6) == 6
    backend.run(threads=2)
    wait_until(lambda: sum(len(b) for b in got.items()) == 10, DEADLINE_S,
               "stranded and unread entries handled")
    backend.join("batch-reclaim")
    assert stays(lambda: sorted(n for b in got.items() for n in b) == list(range(10)), QUIET_S)
