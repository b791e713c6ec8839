"""F14 and atomic dedupe: handlers that are slow but alive, and copies of one event that run
at the same instant.

- F14: handlers of 3 leases (4.5 s).  With lease refresh nothing is reclaimed from its live
  worker: duplicates 0.  The negative control, the same with lease refresh turned off (its
  own workers, namespace and history, running at the same time), shows duplicate
  deliveries (> 0: the test can see them), which reach the handler without dedupe and are
  caught by dedupe (side effects once).
- Dedupe is atomic: each event is written twice (two entries, one event id) and the copies
  run at the same instant on two workers; with dedupe the side effect happens once per
  event, without (the control, same events) twice.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from support.figures import record
from support.waiting import wait_until
from support.workercase import LEASE_MS, WorkerCase

from chi_redis import Event
from chi_redis.events.codec import entry_fields

pytestmark = pytest.mark.redis

SLOW_MS = 3 * LEASE_MS


def _by_sub(counts: Counter[str], sub: str) -> Counter[str]:
    return Counter({k: n for k, n in counts.items() if k.split(":", 1)[0] == sub})


def test_handler_slower_than_the_lease_runs_once_and_the_control_shows_duplicates(
    case: WorkerCase, tmp_path: Path
) -> None:
    control = WorkerCase(tmp_path / "control", case.server, case.ns + "c")
    try:
        subs = ["lease", "lease-dd"]
        live = [case.start(["lease"]), case.start(["lease"])]
        # No refresh: nothing stops a reclaim, so more deliveries than max_deliveries are
        # allowed (none is dead-lettered while its first run still goes on).
        ctl = [control.start(subs, threads=3, CHI_TEST_NO_LEASE_REFRESH="1",
                             CHI_MAX_DELIVERIES="50") for _ in range(2)]
        case.ready({"lease": ["lease"]}, *live)
        control.ready({s: ["lease"] for s in subs}, *ctl)
        events = [Event(type="lease.job", data={"n": i, "sleep_ms": SLOW_MS}) for i in range(4)]
        case.publish(events, ["lease"])
        # (the duplicate runs the control sees are short: the test need not wait them out)
        control_events = [Event(type="lease.job", data={"n": i, "sleep_ms": SLOW_MS,
                                                        "again_ms": 100}) for i in range(2)]
        control.publish(control_events, subs)
        for c, evs, names in ((case, events, ["lease"]), (control, control_events, subs)):
            keys = [f"{s}:{e.id}" for e in evs for s in names]
            wait_until(lambda c=c, k=keys: c.committed(k), 120, "slow handlers committed",
                       interval=0.1)
            c.wait_drained({s: ["lease"] for s in names})
        verdict, ctl_verdict = case.history.check(), control.history.check()
        ctl_commits, ctl_deliveries = control.history.commits(), control.deliveries()
        raw = sum(_by_sub(ctl_commits, "lease").values()) - len(control_events)
        caught = sum(_by_sub(ctl_deliveries, "lease-dd").values()) - len(control_events)
        record("F14-slow-handler-3x-lease", **verdict.figures(), handler_ms=SLOW_MS,
               lease_ms=LEASE_MS, deliveries=sum(case.deliveries().values()),
               control_duplicate_side_effects_without_dedupe=raw,
               control_duplicate_deliveries_caught_by_dedupe=caught,
               control_duplicate_side_effects_with_dedupe=sum(
                   _by_sub(ctl_commits, "lease-dd").values()) - len(control_events),
               control=ctl_verdict.figures())
        verdict.assert_nothing_lost(max_duplicated=0)
        assert case.deliveries() == Counter({f"lease:{e.id}": 1 for e in events})
        # the control: reclaims of live handlers do happen without refresh ...
        ctl_verdict.assert_nothing_lost(max_duplicated=None)
        assert raw > 0, "without lease refresh the test sees duplicate runs"
        # ... and dedupe keeps each side effect to one
        assert caught > 0
        assert _by_sub(ctl_commits, "lease-dd") == Counter(
            {f"lease-dd:{e.id}": 1 for e in control_events})
    finally:
        control.close()


def _overlapped(case: WorkerCase, key: str) -> bool:
    """Whether the second delivery of ``key`` came before its first run committed: the
    two copies (one event id, two entries) were at the handler at the same instant."""
    delivered = sorted(at for kind, k, _, at in case.lines("delivery-*.log") if k == key)
    committed = min(at for kind, k, _, at in case.lines() if k == key and kind == "commit")
    return len(delivered) == 2 and delivered[1] < committed


def test_two_copies_of_an_event_at_the_same_instant_run_the_handler_once(
    case: WorkerCase,
) -> None:
    subs = ["twice", "twice-dd"]
    w1, w2 = case.start(subs, threads=4), case.start(subs, threads=4)
    case.ready({s: ["twice"] for s in subs}, w1, w2)
    events = [Event(type="twice.job", data={"n": i, "sleep_ms": 1000}) for i in range(3)]
    # Two entries of each event id, one after the other: what an XADD retried after a lost
    # reply writes (the publisher itself refuses an event id it already wrote).
    stream = case.keys.stream("twice")
    pipe = case.client.pipeline(transaction=False)
    for e in events:
        for s in subs:
            case.history.invoke(f"{s}:{e.id}")
        fields = entry_fields(case.bus.codec.encode(e))
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
    pipe.execute()
    for e in events:
        for s in subs:
            case.history.ok(f"{s}:{e.id}")
    keys = [f"{s}:{e.id}" for e in events for s in subs]
    want = Counter({k: 2 for k in keys})
    wait_until(lambda: case.deliveries() == want, 60, "every copy delivered", interval=0.1)
    wait_until(lambda: case.committed(keys), 60, "both subscriptions ran", interval=0.1)
    case.wait_drained({s: ["twice"] for s in subs})
    commits = case.history.commits()
    verdict = case.history.check()
    together = {s: sum(_overlapped(case, f"{s}:{e.id}") for e in events) for s in subs}
    record("dedupe-two-copies-at-once", **verdict.figures(), copies_per_event=2,
           copies_at_the_same_instant=together,
           side_effects_with_dedupe=sum(_by_sub(commits, "twice-dd").values()),
           side_effects_without_dedupe=sum(_by_sub(commits, "twice").values()))
    # control: without dedupe both copies run
    assert _by_sub(commits, "twice") == Counter({f"twice:{e.id}": 2 for e in events})
    # dedupe: one side effect per event, though the copies reached it at the same instant
    assert _by_sub(commits, "twice-dd") == Counter({f"twice-dd:{e.id}": 1 for e in events})
    assert together["twice-dd"] >= 1, together
    verdict.assert_nothing_lost(max_duplicated=len(events))  # the control's, exactly
    assert verdict.duplicated == len(events)
