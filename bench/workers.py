"""Real worker processes for the end-to-end benches: start, stop, wait until a group drained.

Workers are ``dramatiq chi_redis.worker e2e_handlers`` processes (the handlers in
``bench/e2e_handlers.py``), started in a session of their own and stopped by their
process-group id.  "Handled" means acked: the group has nothing pending and has read the
last published entry.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

__all__ = [
    "batch_supported",
    "cpu_seconds",
    "drained",
    "run_delay_seconds",
    "start_workers",
    "stop_workers",
    "wait_drained",
    "wait_reading",
]


def batch_supported() -> bool:
    """Whether ``EventBus.subscribe`` takes ``batch_size`` (batch subscriptions)."""
    from chi_redis import EventBus

    return "batch_size" in inspect.signature(EventBus.subscribe).parameters


def start_workers(url: str, namespace: str, processes: int, threads: int,
                  queues: list[str], env: dict[str, str] | None = None
                  ) -> subprocess.Popen[bytes]:
    """``dramatiq chi_redis.worker e2e_handlers`` on ``queues``, in a session of its own
    (``env``: more environment variables, e.g. ``CHI_*`` settings)."""
    env = {
        **os.environ,
        **(env or {}),
        "CHI_REDIS_URL": url,
        "CHI_NAMESPACE": namespace,
        "PYTHONPATH": f"{ROOT}:{HERE}",
        "dramatiq_queue_prefetch": os.environ.get("BENCH_PREFETCH", "64"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "chi_redis.worker", "e2e_handlers",
         "--processes", str(processes), "--threads", str(threads), "--queues", *queues],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by the dramatiq master ``pid`` and every
    process under it (the worker processes it forked)."""
    try:
        master = psutil.Process(pid)
        procs = [master, *master.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def run_delay_seconds(pid: int) -> float | None:
    """Seconds the threads of the dramatiq master ``pid`` and of every process under it
    spent runnable but waiting for a CPU (the run queue, ``/proc/<pid>/task/*/schedstat``):
    time a worker is not running without waiting on anything.  None where the kernel does
    not say (not Linux, or no schedstat)."""
    try:
        master = psutil.Process(pid)
        pids = [pid, *(p.pid for p in master.children(recursive=True))]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in pids:
        tasks = Path(f"/proc/{p}/task")
        try:
            threads = list(tasks.iterdir())
        except OSError:
            if not tasks.parent.parent.is_dir():
                return None  # no /proc
            continue  # the process exited
        for t in threads:
            try:
                total += int((t / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def stop_workers(proc: subprocess.Popen[bytes]) -> None:
    """Kill the workers' process group (ours: started by :func:`start_workers`).

    Called once the figures are taken: a graceful SIGTERM costs 2-3 s per start here
    (Dramatiq joins its consumer and worker threads), which the smoke run pays ten times.
    """
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def drained(r: redis.Redis, stream: str, group: str, last_id: bytes) -> bool:
    """Whether ``group`` read up to ``last_id`` and has nothing pending."""
    for g in r.xinfo_groups(stream):
        if g["name"] == group.encode():
            return bool(g["pending"] == 0 and g["last-delivered-id"] == last_id)
    return False


def wait_groups(r: redis.Redis, stream: str, groups: list[str], timeout: float,
                proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until the workers created every group in ``groups`` on ``stream``.

    A warm-up event published before a ``start="new"`` group exists is never delivered (the
    group starts after it), so waiting for it to drain would pass before the workers run.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            names = {g["name"].decode() for g in r.xinfo_groups(stream)}
        except redis.ResponseError:  # no stream yet
            names = set()
        if names.issuperset(groups):
            return
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the workers exited ({proc.returncode}) before their groups existed")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for the groups {groups} on {stream}")
        time.sleep(0.01)


def wait_reading(r: redis.Redis, stream: str, groups: list[str], timeout: float,
                 proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until every group in ``groups``, created on an empty ``stream``, read an entry
    (its last-delivered id moved): the workers booted and consume."""
    deadline = time.monotonic() + timeout
    while True:
        read = {g["name"].decode() for g in r.xinfo_groups(stream)
                if g["last-delivered-id"] != b"0-0"}
        if read.issuperset(groups):
            return
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the workers exited ({proc.returncode}) before they read")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {groups} to read {stream}")
        time.sleep(0.002)


def wait_drained(r: redis.Redis, stream: str, groups: list[str], last_id: bytes,
                 timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until every group in ``groups`` drained ``stream`` up to ``last_id``."""
    deadline = time.monotonic() + timeout
    left = list(groups)
    while left:
        left = [g for g in left if not drained(r, stream, g, last_id)]
        if not left:
            return
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the workers exited ({proc.returncode}) before {left} drained")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {left} to drain {stream}")
        time.sleep(0.005)
