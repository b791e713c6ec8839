"""F3b: an event that kills its worker takes no innocent event read with it to the dead letters.

A ``poison-exit`` worker (two threads, prefetch 8) reads eight events in one XREADGROUP: two
good ones, the poison one (its handler calls ``os._exit(1)`` after 150 ms), five more good
ones (each handler takes 300 ms: one runs beside the poison one when it kills the process).
Each crash leaves all it held pending; the test's loop restarts the worker, which reclaims
them once their lease expires, every one with its delivery count raised.
``max_deliveries`` counts handler starts, and an entry delivered again runs alone
(docs/design.md §5.5): the poison event is dead-lettered after ``max_deliveries`` starts and
never delivered again, and every good event runs (none dead-lettered, none lost).

Two negative controls run the same case beside it, each without one of the two mechanisms:
``CHI_TEST_COUNT_DELIVERIES=1`` (the old guard, counting deliveries): the good events read
behind the poison one are dead-lettered with it, never having started;
``CHI_TEST_NOT_ALONE=1`` (entries delivered again run beside each other): the good event
that runs beside the poison one is killed with it at every crash, and dead-lettered with it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.figures import record
from support.processes import WorkerProcess
from support.waiting import stays, wait_until
from support.workercase import MAX_DELIVERIES, WorkerCase

from chi_redis import Event

pytestmark = pytest.mark.redis

SUB, TOPIC = "poison-exit", "poison"
PREFETCH = 8
GOOD_MS = 300
#: How long the poison handler runs before it kills the process: the other thread has
#: started the next entry by then.
POISON_MS = 150
#: Longer than a lease and a few sweeps (support.workercase): a reclaim would have happened.
WATCH_S = 4.0


def _start(case: WorkerCase, **env: str) -> tuple[WorkerProcess, Event, list[Event]]:
    """The group first, then the events, then the worker: its first read takes all eight."""
    case.client.xgroup_create(case.keys.stream(TOPIC), SUB, id="0", mkstream=True)
    good = [Event(type="poison.ok", data={"n": i, "sleep_ms": GOOD_MS})
            for i in range(PREFETCH - 1)]
    poison = Event(type="poison.exit", data={"v": "exit", "sleep_ms": POISON_MS})
    for e in good:  # in the history: the good events (the poison one never commits)
        case.history.invoke(f"{SUB}:{e.id}")
    case.bus.publish_batch([*good[:2], poison, *good[2:]])
    for e in good:
        case.history.ok(f"{SUB}:{e.id}")
    worker = case.start([SUB], threads=2, CHI_PREFETCH=PREFETCH, **env)
    worker.supervise(max_restarts=MAX_DELIVERIES + 2)
    return worker, poison, good


def _innocents_dead_lettered(case: WorkerCase, poison: Event) -> list[tuple[str, int]]:
    """``(reason, handler starts)`` of each good event of ``case`` in the dead letters."""
    starts = case.history.starts()
    return [(d.reason, starts[f"{SUB}:{d.event_id}"]) for d in case.bus.dead_letters(SUB)
            if d.event_id != poison.id]


def test_events_read_with_a_crashing_one_are_handled_and_only_it_is_dead_lettered(
    case: WorkerCase, tmp_path: Path
) -> None:
    controls = {name: WorkerCase(tmp_path / name, case.server, case.ns + name)
                for name in ("deliveries", "together")}
    try:
        t0 = time.monotonic()
        worker, poison, good = _start(case)
        ctl = {
            "deliveries": _start(controls["deliveries"], CHI_TEST_COUNT_DELIVERIES="1"),
            "together": _start(controls["together"], CHI_TEST_NOT_ALONE="1"),
        }
        poison_key = f"{SUB}:{poison.id}"
        good_keys = [f"{SUB}:{e.id}" for e in good]
        wait_until(lambda: case.dlq(SUB) >= 1, 120, "the poison event dead-lettered",
                   interval=0.05)
        to_dlq_s = time.monotonic() - t0
        wait_until(lambda: case.committed(good_keys), 120, "every good event handled",
                   interval=0.1)
        case.wait_drained({SUB: [TOPIC]})
        for name, c in controls.items():
            wait_until(lambda c=c, w=ctl[name][0]: w.starts > MAX_DELIVERIES
                       and c.dlq(SUB) >= 1 and c.drained(SUB, [TOPIC]), 120,
                       f"the {name} control's crash loop ended", interval=0.1)

        letters = case.bus.dead_letters(SUB)
        assert [(d.event_id, d.reason) for d in letters] == [(poison.id, "max_deliveries")]
        assert letters[0].deliveries == MAX_DELIVERIES + 1, letters[0]
        starts = case.history.starts()
        assert starts[poison_key] == MAX_DELIVERIES  # within max_deliveries starts
        assert worker.starts == MAX_DELIVERIES + 1  # one crash per start, then no more
        # never delivered again: no start, no delivery, no restart over several leases
        before = (case.history.starts(), case.deliveries(), worker.starts)
        assert stays(lambda: (case.history.starts(), case.deliveries(), worker.starts)
                     == before, WATCH_S, interval=0.25), "delivered again after its dead letter"
        assert case.dlq(SUB) == 1
        verdict = case.history.check()
        # what ran (or was running) in the first crashed process may run once more
        verdict.assert_nothing_lost(max_duplicated=PREFETCH - 1)

        # Counting deliveries: the good events behind the poison one, never started, go to
        # the dead letters with it at the same crash.
        counted = _innocents_dead_lettered(controls["deliveries"], ctl["deliveries"][1])
        assert counted and all(r == "max_deliveries" for r, _ in counted), counted
        assert any(n == 0 for _, n in counted), counted
        # Not alone: the good event beside the poison one is killed with it every time.
        together = _innocents_dead_lettered(controls["together"], ctl["together"][1])
        assert together and all(r == "max_deliveries" and n >= MAX_DELIVERIES
                                for r, n in together), together
        record("F3b-crash-readahead", **verdict.figures(), prefetch=PREFETCH, threads=2,
               poison_starts=starts[poison_key], time_to_dlq_s=round(to_dlq_s, 3),
               worker_restarts=worker.starts - 1, good_dead_lettered=0,
               control_counting_deliveries_good_dead_lettered=len(counted),
               control_not_alone_good_dead_lettered=len(together))
    finally:
        for c in controls.values():
            c.close()
