"""F15: graceful shutdown (SIGTERM) with handlers in flight, and F15b: honcho stops the whole
Procfile when one process exits.

F15: two workers; one gets SIGTERM while it runs an 8 s handler (longer than its
``--worker-shutdown-timeout`` of 5 s) and short ones, with more entries read ahead.  The
short handler finishes and is acked by the stopping worker; what it had read but not
started is handed back at once and runs on the other worker well before the shutdown
timeout; the handler cut off by the timeout is reclaimed after its lease.  lost 0,
duplicates 0 (the cut-off handler never committed), at most what it held delivered again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.figures import record
from support.processes import clean_env
from support.waiting import wait_until
from support.workercase import LEASE_MS, WorkerCase, worker_child

from chi_redis import Event

pytestmark = pytest.mark.redis

SHUTDOWN_TIMEOUT_S = 5.0  # support.processes.WorkerProcess: --worker-shutdown-timeout 5000
LONG_MS = 8000


def test_sigterm_finishes_or_hands_back_what_the_worker_holds(case: WorkerCase) -> None:
    w1, w2 = case.start(["term"], threads=3), case.start(["term"], threads=3)
    case.ready({"term": ["term"]}, w1, w2)
    children = {worker_child(w1): w1, worker_child(w2): w2}
    long = Event(type="term.job", data={"n": 0, "sleep_ms": LONG_MS, "again_ms": 100})
    short = [Event(type="term.job", data={"n": i, "sleep_ms": 1000}) for i in range(1, 16)]
    events = [long, *short]
    keys = {e.id: f"term:{e.id}" for e in events}
    case.publish([long], ["term"])
    # A: the worker running the long handler; then the short ones, read by both
    child_a = wait_until(lambda: next((pid for kind, k, pid, _ in case.lines()
                                       if kind == "start" and k == keys[long.id]), None),
                         60, "the long handler started", interval=0.01)
    a = children[child_a]
    b = next(w for pid, w in children.items() if pid != child_a)
    case.publish(short, ["term"])

    def started_by_a() -> set[str]:
        return {k for kind, k, pid, _ in case.lines() if kind == "start" and pid == child_a}

    wait_until(lambda: len(started_by_a()) >= 3, 60, "A runs three handlers", interval=0.01)
    held = next(c for c in case.consumers("term", "term") if f"-{child_a}-" in c["name"])
    a.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    sent = time.monotonic()
    running = started_by_a()
    a.proc.wait(timeout=SHUTDOWN_TIMEOUT_S + 30)  # type: ignore[union-attr]
    exited_in = time.monotonic() - sent
    wait_until(lambda: case.committed(keys.values()), 120, "every event committed",
               interval=0.1)
    case.wait_drained({"term": ["term"]})

    lines = case.lines()
    commits_a = {k for kind, k, pid, _ in lines if kind == "commit" and pid == child_a}
    cut_off = running - commits_a  # still running at the timeout: the process ended them
    unstarted = set(keys.values()) - running
    # entries A held but never started, handed back at SIGTERM: B ran them, when?
    handed = {k: at - sent for kind, k, pid, at in case.lines("delivery-*.log")
              if pid != child_a and k in unstarted and at > sent}
    verdict = case.history.check()
    raw = sum(case.deliveries().values()) - len(events)
    record("F15-sigterm-in-flight", **verdict.figures(), in_flight_at_sigterm=held["pending"],
           running_at_sigterm=len(running), finished_by_stopping_worker=len(commits_a),
           cut_off_by_shutdown_timeout=len(cut_off), raw_duplicate_deliveries=raw,
           sigterm_to_exit_s=round(exited_in, 3), shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
           first_handed_back_run_after_s=round(min(handed.values()), 3) if handed else None,
           lease_ms=LEASE_MS)
    verdict.assert_nothing_lost(max_duplicated=0)
    assert a.proc.returncode == 0  # type: ignore[union-attr]
    assert exited_in <= SHUTDOWN_TIMEOUT_S + 10
    # the short handlers A was running finished there; the too-long one was cut off
    assert cut_off == {keys[long.id]} and len(running - cut_off) >= 2, (running, commits_a)
    assert raw <= held["pending"], (raw, held)
    # read ahead but not started: handed back at once, not after the shutdown timeout
    assert handed, "A had read entries ahead"
    early = [k for k, after in handed.items() if after < SHUTDOWN_TIMEOUT_S]
    assert early, handed
    assert b.alive()


def test_honcho_stops_every_process_when_one_exits(tmp_path: Path) -> None:
    """F15b: honcho is a development runner: one process ending stops all the others (it
    restarts nothing), so production runs each process under a supervisor that restarts
    it (docs/operations.md)."""
    alive = tmp_path / "alive"
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        f"steady: {sys.executable} -c \"import pathlib, os, time; "
        f"pathlib.Path({str(alive)!r}).write_text(str(os.getpid())); time.sleep(120)\"\n"
        f"crashing: {sys.executable} -c \"import time; time.sleep(1.5); raise SystemExit(3)\"\n"
    )
    honcho = Path(sys.executable).with_name("honcho")
    started = time.monotonic()
    proc = subprocess.run([str(honcho), "-f", str(procfile), "start"], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=60,
                          start_new_session=True)
    took = time.monotonic() - started
    steady_pid = int(alive.read_text())
    record("F15b-honcho-stops-all", honcho_exit_code=proc.returncode,
           stopped_after_s=round(took, 2))
    assert proc.returncode == 3, proc.stdout + proc.stderr  # the first process's exit code
    assert "crashing.1 stopped (rc=3)" in proc.stdout
    assert "sending SIGTERM to steady.1" in proc.stdout
    assert took < 30  # the steady process did not run out its 120 s
    assert not Path(f"/proc/{steady_pid}").exists() or _zombie(steady_pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
