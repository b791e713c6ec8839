"""F3: poison events reach the dead letters within ``max_deliveries`` and never loop.

Three subscriptions of topic ``poison``, each with one poison variant among good events:
(a) ``poison-exc``: the handler raises (retried twice, then dead-lettered);
(b) ``poison-exit``: the handler calls ``os._exit(1)`` (its own worker, restarted by the
test's loop each time; only the delivery count can stop it);
(c) ``poison-hang``: the handler hangs past its 500 ms time limit.
Each poison event is dead-lettered exactly once with its fields (reason, exception type,
deliveries, source stream and entry id, a capped and redacted error), acked; the good
events all run.  Then one 30 s watch for all three: no further delivery, no worker
restart, workers idle (CPU).  Finally ``chi-redis dlq list`` shows the dead letter and
``dlq redrive`` (subprocesses) puts it back once, after the handler was "fixed".

(b)'s worker runs with the default prefetch: the good events it read together with the
killing one are redelivered with it after each crash, and run (``max_deliveries`` counts
handler starts, docs/design.md §5.5; test_crash_readahead covers that case on its own).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from support.figures import record
from support.processes import ROOT, clean_env
from support.waiting import stays, wait_until
from support.workercase import MAX_DELIVERIES, WorkerCase, cpu_seconds

from chi_redis import Event

pytestmark = pytest.mark.redis

SUBS = {"poison-exc": "exc", "poison-exit": "exit", "poison-hang": "hang"}
MAX_RETRIES = 2
WATCH_S = 30.0
#: The workers' CPU over the watch, as a share of one core: idle is a few per cent.
IDLE_CPU_SHARE = 0.15


def _cli(case: WorkerCase, *args: str) -> str:
    env = clean_env(CHI_REDIS_URL=case.server.url, CHI_NAMESPACE=case.ns)
    proc = subprocess.run([sys.executable, "-m", "chi_redis.cli", "dlq", *args], env=env,
                          cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_poison_is_dead_lettered_once_then_never_delivered_again(case: WorkerCase) -> None:
    both = case.start(["poison-exc", "poison-hang"], threads=2)
    exiting = case.start(["poison-exit"], threads=1)
    exiting.supervise(max_restarts=MAX_DELIVERIES + 2)
    case.ready({s: ["poison"] for s in SUBS}, both, exiting)
    poison = {s: Event(type=f"poison.{v}", data={"v": v}) for s, v in SUBS.items()}
    good = [Event(type="poison.ok", data={"n": i}) for i in range(30)]
    t0 = time.monotonic()
    # In the history: the good events, and (a) for its subscription, which commits it once
    # it is redriven after the fix; the others never commit.
    fixable = f"poison-exc:{poison['poison-exc'].id}"
    case.history.invoke(fixable)
    ids = dict(zip(SUBS, case.bus.publish_batch(list(poison.values())), strict=True))
    case.history.ok(fixable)
    case.publish(good, SUBS)
    good_keys = [f"{s}:{e.id}" for e in good for s in SUBS]
    to_dlq = {}
    for sub in SUBS:
        wait_until(lambda s=sub: case.dlq(s) >= 1, 120, f"{sub}: dead-lettered", interval=0.05)
        to_dlq[sub] = round(time.monotonic() - t0, 3)
    wait_until(lambda: case.committed(good_keys), 120, "the good events", interval=0.1)
    good_done_s = time.monotonic() - t0
    case.wait_drained({s: ["poison"] for s in SUBS})  # acked, nothing pending

    every = {s: case.bus.dead_letters(s) for s in SUBS}
    assert all(len(v) == 1 for v in every.values()), {
        s: [(d.reason, d.type) for d in v] for s, v in every.items()}
    letters = {s: v[0] for s, v in every.items()}
    starts = case.history.starts()
    runs = {s: starts[f"{s}:{poison[s].id}"] for s in SUBS}
    for sub, dl in letters.items():
        assert (dl.event_id, dl.source_id) == (poison[sub].id, ids[sub]), dl
        assert dl.source_stream == case.keys.stream("poison") and dl.body, dl
    exc = letters["poison-exc"]
    assert (exc.reason, exc.error_type, exc.deliveries) == ("retries_exhausted", "ValueError", 1)
    assert exc.attempts == 1 + MAX_RETRIES == runs["poison-exc"]
    assert len(exc.error) <= 500 and "hunter2-canary" not in exc.error + exc.traceback, exc
    assert len(exc.traceback) <= 2000
    hang = letters["poison-hang"]
    assert (hang.reason, hang.error_type) == ("retries_exhausted", "TimeLimitExceeded"), hang
    assert runs["poison-hang"] == 1 + MAX_RETRIES
    died = letters["poison-exit"]
    # three runs, each killing its process; the fourth delivery is the dead-lettering claim
    assert (died.reason, died.deliveries) == ("max_deliveries", MAX_DELIVERIES + 1), died
    assert runs["poison-exit"] == MAX_DELIVERIES and exiting.starts == MAX_DELIVERIES + 1

    # one watch for all three: nothing delivered again, no restart, idle workers
    before = (case.history.starts(), case.deliveries(), exiting.starts, both.starts)
    pids = [both.pid, exiting.pid, *both.children(), *exiting.children()]
    cpu0 = cpu_seconds(pids)
    quiet = stays(lambda: (case.history.starts(), case.deliveries(), exiting.starts,
                           both.starts) == before, WATCH_S, interval=0.5)
    cpu_share = (cpu_seconds(pids) - cpu0) / WATCH_S
    assert quiet, "a delivery or a restart during the watch"
    assert all(case.dlq(s) == 1 for s in SUBS)

    listed = _cli(case, "list", "poison-exc")
    case.client.set(f"{case.ns}:t:fixed", 1)
    redriven = _cli(case, "redrive", "poison-exc", "--all")
    wait_until(lambda: case.history.commits()[fixable] == 1, 60, "the redriven event ran")
    case.wait_drained({"poison-exc": ["poison"]})
    assert stays(lambda: case.history.commits()[fixable] == 1, 1.0)  # once
    assert case.dlq("poison-exc") == 0 and "0 dead letter" in _cli(case, "redrive",
                                                                   "poison-exc", "--all")

    verdict = case.history.check()
    record("F3-poison", **verdict.figures(), handler_runs=runs, time_to_dlq_s=to_dlq,
           reasons={s: dl.reason for s, dl in letters.items()},
           good_events_per_s=round(len(good_keys) / good_done_s, 1), watch_s=WATCH_S,
           worker_cpu_share_during_watch=round(cpu_share, 4),
           worker_restarts={"poison-exit": exiting.starts - 1, "others": both.starts - 1},
           cli_redrive=redriven.strip())
    assert poison["poison-exc"].id in listed
    assert cpu_share < IDLE_CPU_SHARE, cpu_share
    # good events a crashing worker had read but not acked run again: at most those
    verdict.assert_nothing_lost(max_duplicated=len(good))
