"""Inline runs: a fast handler's message runs on the consumer thread that read it when every
worker thread is idle (chi_redis.runtime.inline).  What must hold: it happens only then (one
queue, fast handler, idle workers, no per-thread middleware, the option on); the time limit,
retries and dead letters work the same; the lease of a long inline run is kept, so no other
worker takes it over; a shutdown waits for it.  Run on fakeredis and on the real server."""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
import pytest
from dramatiq.worker import ConsumerThread, WorkerThread
from support import Runtime, wait_until

from chi_redis import Event
from chi_redis.runtime import inline


def ev(n: int, **extra: Any) -> Event:
    return Event(type="job.run", data={"n": n, **extra})


class Seen:
    """What a handler saw: each event's n, and the kind of thread it ran on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[tuple[int, str]] = []

    def add(self, event: Event) -> None:
        t = threading.current_thread()
        kind = ("consumer" if isinstance(t, ConsumerThread)
                else "worker" if isinstance(t, WorkerThread) else type(t).__name__)
        with self.lock:
            self.runs.append((event.data["n"], kind))

    def kinds(self) -> set[str]:
        with self.lock:
            return {k for _, k in self.runs}

    def ns(self) -> list[int]:
        with self.lock:
            return sorted(n for n, _ in self.runs)


@pytest.fixture(autouse=True)
def _fast_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every handler here that is meant to be fast is, on a loaded machine too."""
    monkeypatch.setattr(inline, "INLINE_MAX_RUN_S", 0.05)


def idle(worker: dramatiq.Worker) -> None:
    wait_until(lambda: worker.work_queue.unfinished_tasks == 0, timeout=30,
               message="every worker thread idle")


def one_by_one(rt: Runtime, worker: dramatiq.Worker, seen: Seen, count: int,
               start: int = 0) -> None:
    """Publish ``count`` events, each once the one before was handled and the worker's
    threads are idle again."""
    for n in range(start, start + count):
        rt.publish(ev(n))
        wait_until(lambda n=n: n in seen.ns(), timeout=30, message=f"event {n} handled")
        idle(worker)


def test_a_fast_handler_runs_on_the_consumer_thread_when_the_workers_are_idle(
        rt: Runtime) -> None:
    seen = Seen()
    rt.bus.subscribe("fast", types=["job.run"])(seen.add)
    worker = rt.worker(rt.broker(), threads=2)
    one_by_one(rt, worker, seen, 30)
    assert seen.ns() == list(range(30))  # each exactly once
    # The first run goes to a worker thread (the handler's time is not known yet); once it
    # is known to be fast, the consumer thread runs each.
    assert seen.runs[0][1] == "worker"
    assert {k for _, k in seen.runs[1:]} == {"consumer"}


def test_the_option_off_keeps_every_run_on_worker_threads(rt: Runtime) -> None:
    seen = Seen()
    rt.bus.subscribe("fast", types=["job.run"])(seen.add)
    worker = rt.worker(rt.broker(inline_when_idle=False), threads=2)
    one_by_one(rt, worker, seen, 30)
    assert seen.ns() == list(range(30))
    assert seen.kinds() == {"worker"}


def test_a_slow_handler_stays_on_worker_threads(rt: Runtime) -> None:
    seen = Seen()

    @rt.bus.subscribe("slow", types=["job.run"])
    def slow(event: Event) -> None:
        time.sleep(0.1)  # twice INLINE_MAX_RUN_S (as patched here)
        seen.add(event)

    worker = rt.worker(rt.broker(), threads=2)
    one_by_one(rt, worker, seen, 10)
    assert seen.kinds() == {"worker"}


def test_a_worker_on_two_queues_never_runs_inline(rt: Runtime) -> None:
    seen = Seen()
    rt.bus.subscribe("fast", types=["job.run"])(seen.add)
    rt.bus.subscribe("other", types=["other.run"])(lambda event: None)
    worker = rt.worker(rt.broker(), threads=2)
    one_by_one(rt, worker, seen, 30)
    assert seen.kinds() == {"worker"}


class _PerThread(dramatiq.Middleware):
    """Keeps per-thread state, which only worker threads set up."""

    def __init__(self) -> None:
        self.local = threading.local()

    def after_worker_thread_boot(self, broker: Any, thread: Any) -> None:
        self.local.ready = True


def test_a_middleware_with_per_thread_state_keeps_runs_on_worker_threads(
        rt: Runtime) -> None:
    seen = Seen()
    per_thread = _PerThread()

    @rt.bus.subscribe("fast", types=["job.run"])
    def fast(event: Event) -> None:
        assert per_thread.local.ready  # the state its middleware set up is there
        seen.add(event)

    broker = rt.broker()
    broker.add_middleware(per_thread)
    worker = rt.worker(broker, threads=2)
    one_by_one(rt, worker, seen, 30)
    assert seen.ns() == list(range(30))
    assert seen.kinds() == {"worker"}


def test_the_time_limit_stops_an_inline_run_and_the_consumer_goes_on(rt: Runtime) -> None:
    seen = Seen()
    stopped: list[str] = []

    @rt.bus.subscribe("fast", types=["job.run"], time_limit_ms=300, max_retries=0)
    def fast(event: Event) -> None:
        if event.data.get("hang"):
            kind = "consumer" if isinstance(threading.current_thread(), ConsumerThread) else "?"
            stopped.append(kind)
            for _ in range(600):  # async exceptions land between bytecodes, not in sleep()
                time.sleep(0.05)
            stopped.append("finished")  # never: the time limit stops it
        seen.add(event)

    worker = rt.worker(rt.broker(), threads=2)
    one_by_one(rt, worker, seen, 5)
    assert seen.runs[-1][1] == "consumer"  # so the next one runs inline too
    rt.publish(ev(100, hang=True))
    dead = wait_until(lambda: rt.bus.dead_letters("fast"), timeout=60, message="dead letter")
    assert dead[0].error_type == "TimeLimitExceeded"
    assert stopped == ["consumer"]
    one_by_one(rt, worker, seen, 5, start=5)  # the consumer thread still reads and runs
    assert seen.ns() == list(range(10))


def test_a_long_inline_run_keeps_its_lease(rt: Runtime) -> None:
    """lease 1.5 s, a second worker reclaiming every 0.2 s: a 4 s inline run is never
    taken over (its lease is refreshed while it runs), so it runs exactly once."""
    seen = Seen()
    starts: list[int] = []

    @rt.bus.subscribe("fast", types=["job.run"])
    def fast(event: Event) -> None:
        starts.append(event.data["n"])
        if event.data.get("long"):
            time.sleep(4.0)
        seen.add(event)

    worker = rt.worker(rt.broker(), threads=2)
    one_by_one(rt, worker, seen, 5)
    rt.publish(ev(100, long=True))
    wait_until(lambda: 100 in starts, timeout=30, message="the long run started")
    other = rt.worker(rt.broker(set_global=False), threads=2)  # reclaims every 0.2 s
    wait_until(lambda: 100 in seen.ns(), timeout=60, message="the long run finished")
    assert [k for n, k in seen.runs if n == 100] == ["consumer"]
    rt.stop(other)
    assert starts.count(100) == 1, "a second worker took over the inline run"
    stream = rt.bus.keys.stream("job")
    wait_until(lambda: rt.bus.client.xpending(stream, "fast")["pending"] == 0, timeout=30,
               message="every entry acked")


def test_a_shutdown_waits_for_an_inline_run_and_acks_it(rt: Runtime) -> None:
    seen = Seen()
    started = threading.Event()

    @rt.bus.subscribe("fast", types=["job.run"])
    def fast(event: Event) -> None:
        if event.data.get("long"):
            started.set()
            time.sleep(1.0)
        seen.add(event)

    worker = rt.worker(rt.broker(), threads=2)
    one_by_one(rt, worker, seen, 5)
    rt.publish(ev(100, long=True))
    assert started.wait(30)
    rt.stop(worker)  # returns once the run ended
    assert [k for n, k in seen.runs if n == 100] == ["consumer"]
    assert rt.bus.client.xpending(rt.bus.keys.stream("job"), "fast")["pending"] == 0


def test_the_keeper_refreshes_only_runs_past_a_third_of_their_lease() -> None:
    refreshed: list[str] = []

    class _Consumer:
        def __init__(self, name: str, lease_ms: int) -> None:
            self.name = name
            self.opts = type("O", (), {"lease_ms": lease_ms})()
            self.client = None
            self.state = type("S", (), {"claims": {}})()

        def _refresh_leases(self) -> None:
            refreshed.append(self.name)

    keeper = inline.LeaseKeeper()
    keeper._runs = {1: (_Consumer("short", 600), 100.0), 2: (_Consumer("long", 60_000), 100.0)}
    assert keeper.tick(100.1) == 0
    assert keeper.tick(100.25) == 1 and refreshed == ["short"]  # a third of 600 ms
    assert keeper.tick(100.3) == 0  # just refreshed
    assert keeper.tick(101.0) == 2  # the long lease: at most a second between refreshes
    assert refreshed == ["short", "short", "long"]
