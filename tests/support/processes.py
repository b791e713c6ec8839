"""``dramatiq chi_redis.worker`` subprocesses: each a direct child of the test in its own
session, stopped (and its session killed) only by the PID we started."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
CHI = Path(sys.executable).parent / "chi-redis"  # the console script of this environment


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's CHI_* / dramatiq_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHI_", "dramatiq_"))}
    env.update(extra)
    return env


def chi(env: dict[str, str], *args: str, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    """``chi-redis args…`` as a subprocess in ``env``, its output captured."""
    return subprocess.run([str(CHI), *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=120, check=False)


def ok(env: dict[str, str], *args: str) -> str:
    """The standard output of ``chi-redis args…``, which must exit 0."""
    out = chi(env, *args)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def worker_env(url: str, ns: str, **extra: Any) -> dict[str, str]:
    """The environment of a test worker process: fast lease and sweep, handler modules of
    tests/ importable (``runtime.proc_load`` …)."""
    env = clean_env(
        CHI_REDIS_URL=url,
        CHI_NAMESPACE=ns,
        CHI_LEASE_MS="1500",
        CHI_RECLAIM_INTERVAL_MS="300",
        CHI_MAX_DELIVERIES="3",
        CHI_BLOCK_MS="200",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]),
        dramatiq_restart_delay="500",
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class WorkerProcess:
    """``python -m dramatiq chi_redis.worker <module> --processes 1 --threads N``.

    A direct child of the test in its own session; its output goes to ``log``.  Dramatiq's
    master forks one worker child: ``kill_child`` kills that one (the master then exits),
    ``restarts`` counts how often a supervisor started it again.
    """

    def __init__(self, module: str, env: dict[str, str], log: Path, threads: int = 4) -> None:
        self.cmd = [sys.executable, "-m", "dramatiq", "chi_redis.worker", module,
                    "--processes", "1", "--threads", str(threads),
                    "--worker-shutdown-timeout", "5000"]
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._lock = threading.Lock()
        self._supervise = False
        self._thread: threading.Thread | None = None
        self._terminated: subprocess.Popen[bytes] | None = None
        self.max_restarts = 0

    def start(self) -> WorkerProcess:
        with self._lock:
            out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
            try:
                self.proc = subprocess.Popen(
                    self.cmd, env=self.env, cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            finally:
                out.close()
            self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[int]:
        psutil: Any = importlib.import_module("psutil")
        try:
            return [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def supervise(self, max_restarts: int) -> None:
        """Restart the worker whenever it exits (at most ``max_restarts`` times)."""
        self.max_restarts = max_restarts
        self._supervise = True

        def loop() -> None:
            while self._supervise:
                if self.proc is not None and self.proc.poll() is not None:
                    if self.starts > self.max_restarts:
                        return
                    self.start()
                time.sleep(0.1)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def terminate(self) -> None:
        """Stop supervising and send SIGTERM (once), without waiting (:meth:`stop` waits)."""
        self._supervise = False
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            proc = self.proc
        if proc is not None and proc.poll() is None and proc is not self._terminated:
            self._terminated = proc
            proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20) -> None:
        self.terminate()
        with self._lock:
            proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
        # The session we created holds the master and its children: nothing else.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class Workers:
    """Worker processes of one test, stopped (and their sessions killed) at teardown."""

    def __init__(self, tmp: Path, url: str, ns: str) -> None:
        self.tmp = tmp
        self.url = url
        self.ns = ns
        self.procs: list[WorkerProcess] = []

    def start(self, module: str, threads: int = 4, **env: Any) -> WorkerProcess:
        """Start ``dramatiq chi_redis.worker <module>`` (a module importable from tests/)."""
        n = len(self.procs)
        w = WorkerProcess(module, worker_env(self.url, self.ns, **env),
                          self.tmp / f"worker-{n}.log", threads=threads).start()
        self.procs.append(w)
        return w

    def stop(self) -> None:
        for w in self.procs:  # SIGTERM to all first: they shut down side by side
            w.terminate()
        for w in self.procs:
            w.stop()

    def logs(self) -> str:
        return "\n".join(w.output() for w in self.procs)


def wait_ready(*procs: WorkerProcess, timeout: float = 60) -> None:
    """Wait until each worker process logged that it is ready (its Worker has started).

    (XINFO CONSUMERS cannot tell: Redis 7.0 creates a consumer only when a read gets entries
    or does not block.)"""
    wait_until(lambda: all("is ready for action" in p.output() for p in procs), timeout,
               "worker processes ready", interval=0.1)


def int_hash(client: Any, key: str) -> dict[str, int]:
    """A hash of counters the test handlers write, as ``{str: int}``."""
    return {(k.decode() if isinstance(k, bytes) else k): int(v)
            for k, v in client.hgetall(key).items()}
