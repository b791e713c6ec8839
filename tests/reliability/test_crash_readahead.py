"""F3b: an event that kills its worker takes no innocent event read with it to the dead letters.

The ``poison-exit`` worker (one thread, prefetch 8) reads eight events in one XREADGROUP:
two good ones, the poison one (its handler calls ``os._exit(1)``), five more good ones.
Each crash leaves all it held pending; the test's loop restarts the worker, which reclaims
them once their lease expires, every one with its delivery count raised.
``max_deliveries`` counts handler starts (docs/design.md §5.5): the poison event is
dead-lettered after ``max_deliveries`` starts and never delivered again, and every good event
runs (none dead-lettered, none lost).  The negative control runs the same case with the old
guard, which counted deliveries (``CHI_TEST_COUNT_DELIVERIES=1``): there the good events read
behind the poison one are dead-lettered with it without having run.
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
#: Longer than a lease and a few sweeps (support.workercase): a reclaim would have happened.
WATCH_S = 4.0


def _start(case: WorkerCase, **env: str) -> tuple[WorkerProcess, Event, list[Event]]:
    """The group first, then the events, then the worker: its first read takes all eight."""
    case.client.xgroup_create(case.keys.stream(TOPIC), SUB, id="0", mkstream=True)
    good = [Event(type="poison.ok", data={"n": i}) for i in range(PREFETCH - 1)]
    poison = Event(type="poison.exit", data={"v": "exit"})
    for e in good:  # in the history: the good events (the poison one never commits)
        case.history.invoke(f"{SUB}:{e.id}")
    case.bus.publish_batch([*good[:2], poison, *good[2:]])
    for e in good:
        case.history.ok(f"{SUB}:{e.id}")
    worker = case.start([SUB], threads=1, CHI_PREFETCH=PREFETCH, **env)
    worker.supervise(max_restarts=MAX_DELIVERIES + 2)
    return worker, poison, good


def test_events_read_with_a_crashing_one_are_handled_and_only_it_is_dead_lettered(
    case: WorkerCase, tmp_path: Path
) -> None:
    control = WorkerCase(tmp_path / "control", case.server, case.ns + "c")
    try:
        t0 = time.monotonic()
        worker, poison, good = _start(case)
        ctl_worker, ctl_poison, ctl_good = _start(control, CHI_TEST_COUNT_DELIVERIES="1")
        poison_key = f"{SUB}:{poison.id}"
        good_keys = [f"{SUB}:{e.id}" for e in good]
        wait_until(lambda: case.dlq(SUB) >= 1, 120, "the poison event dead-lettered",
                   interval=0.05)
        to_dlq_s = time.monotonic() - t0
        wait_until(lambda: case.committed(good_keys), 120, "every good event handled",
                   interval=0.1)
        case.wait_drained({SUB: [TOPIC]})
        wait_until(lambda: ctl_worker.starts > MAX_DELIVERIES and control.dlq(SUB) >= 1
                   and control.drained(SUB, [TOPIC]), 120, "the control's crash loop ended",
                   interval=0.1)

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
        # the good events read before it ran before each crash: at most those run twice
        verdict.assert_nothing_lost(max_duplicated=2 * MAX_DELIVERIES)

        # The control (deliveries counted): the good events behind the poison one go to the
        # dead letters with it at the same crash, never having started.
        ctl = control.bus.dead_letters(SUB)
        ctl_starts = control.history.starts()
        innocent = [d for d in ctl if d.event_id != ctl_poison.id]
        assert innocent and all(d.reason == "max_deliveries" for d in innocent), ctl
        assert all(ctl_starts[f"{SUB}:{d.event_id}"] == 0 for d in innocent), ctl_starts
        assert {d.event_id for d in ctl} <= {ctl_poison.id, *(e.id for e in ctl_good)}
        record("F3b-crash-readahead", **verdict.figures(), prefetch=PREFETCH,
               poison_starts=starts[poison_key], time_to_dlq_s=round(to_dlq_s, 3),
               worker_restarts=worker.starts - 1, good_dead_lettered=0,
               control_good_dead_lettered=len(innocent))
    finally:
        control.close()
