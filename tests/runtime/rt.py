"""Helpers of the runtime tests: waiting, group state, in-process workers, own redis-servers
and `dramatiq chi_redis.worker` subprocesses (each a direct child of the test, killed only
by the PID we started)."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import dramatiq
import redis
from helpers import skip_or_fail, wait_until

from chi_redis import Event, EventBus
from chi_redis.runtime.broker import BrokerOptions, StreamsBroker

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
REDIS_URL = os.environ.get("CHI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# Test knobs (RELIABILITY §4): short lease and sweep, fast backoff.
FAST = {"lease_ms": 1500, "reclaim_interval_ms": 200, "block_ms": 100}





def stays(condition: Callable[[], Any], seconds: float, interval: float = 0.05) -> bool:
    """Whether ``condition`` holds throughout ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(interval)
    return bool(condition())




def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def group_info(client: redis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    """XINFO GROUPS of ``group`` (with ``lag`` computed when the server gives none)."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return None
    for g in groups:
        if _s(g["name"]) == group:
            info = {k: g[k] for k in g}
            if info.get("lag") is None:
                last = _s(g["last-delivered-id"])
                info["lag"] = len(client.xrange(stream, f"({last}", "+") or [])
            return info
    return None


def drained(client: redis.Redis, bus: EventBus, sub: str, topics: Iterable[str]) -> bool:
    """Nothing pending and nothing unread for ``sub`` on its topics and its private stream."""
    streams = [bus.keys.stream(t) for t in topics] + [bus.keys.queue(sub)]
    for s in streams:
        info = group_info(client, s, sub)
        if info is None:
            if s == bus.keys.queue(sub) or not client.exists(s):
                continue
            return False
        if info["pending"] or info["lag"]:
            return False
    return not client.zcard(bus.keys.delayed(sub))


def dlq_len(client: redis.Redis, bus: EventBus, sub: str) -> int:
    return int(client.xlen(bus.keys.dlq(sub)))


class Recorder:
    """Thread-safe record of handler calls."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[Any] = []

    def add(self, item: Any) -> None:
        with self.lock:
            self.calls.append(item)

    def __len__(self) -> int:
        with self.lock:
            return len(self.calls)

    def items(self) -> list[Any]:
        with self.lock:
            return list(self.calls)

    def counts(self) -> Counter[Any]:
        with self.lock:
            return Counter(self.calls)


class Runtime:
    """In-process workers on one namespace: buses, brokers and dramatiq Workers.

    Every broker built here has the test knobs (``FAST``); ``stop()`` stops every Worker
    (the fixture does it at teardown) before the keys are deleted.
    """

    def __init__(self, client: redis.Redis, ns: str, kind: str) -> None:
        self.client = client
        self.ns = ns
        self.kind = kind
        self.bus = EventBus(client, namespace=ns)
        self.workers: list[dramatiq.Worker] = []
        self.brokers: list[StreamsBroker] = []

    def new_bus(self) -> EventBus:
        """Another bus on the same client and namespace (a second "process")."""
        return EventBus(self.client, namespace=self.ns)

    def broker(self, bus: EventBus | None = None, *, set_global: bool = True,
               **options: Any) -> StreamsBroker:
        broker = StreamsBroker(bus or self.bus, options=BrokerOptions(**{**FAST, **options}))
        self.brokers.append(broker)
        if set_global:
            dramatiq.set_broker(broker)
            assert dramatiq.get_broker() is broker
        return broker

    def worker(self, broker: StreamsBroker, threads: int = 4) -> dramatiq.Worker:
        broker.emit_after("process_boot")
        w = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
        w.start()
        self.workers.append(w)
        return w

    def stop(self, worker: dramatiq.Worker | None = None) -> None:
        for w in [worker] if worker is not None else list(self.workers):
            if w in self.workers:
                self.workers.remove(w)
                w.stop(timeout=30_000)

    def publish(self, *events: Event) -> list[str]:
        return [self.bus.publish(e) for e in events]


# own redis-server --------------------------------------------------------------------------
def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of this test (no persistence), stopped only by the PID we started."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            skip_or_fail("redis-server is not installed")
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10,
                           socket_connect_timeout=2)

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir),
             "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "redis-server exited"
            try:
                with contextlib.closing(self.client()) as c:
                    return bool(c.ping())
            except redis.ConnectionError:
                return False

        wait_until(up, 20, message="own redis-server to start")
        return self

    def kill(self) -> None:
        """Stop it without saving (SIGKILL of the PID we started)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


# dramatiq CLI worker processes ----------------------------------------------------------------
def worker_env(url: str, ns: str, **extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHI_", "dramatiq_"))}
    env.update({
        "CHI_REDIS_URL": url,
        "CHI_NAMESPACE": ns,
        "CHI_LEASE_MS": "1500",
        "CHI_RECLAIM_INTERVAL_MS": "300",
        "CHI_MAX_DELIVERIES": "3",
        "CHI_BLOCK_MS": "200",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]),
        "dramatiq_restart_delay": "500",
        "PYTHONUNBUFFERED": "1",
    })
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

    def stop(self, timeout: float = 20) -> None:
        self._supervise = False
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
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


def wait_groups(client: redis.Redis, bus: EventBus, subs: dict[str, list[str]],
                timeout: float = 60) -> None:
    """Wait until every subscription's group exists on each of its topic streams."""

    def ready() -> bool:
        return all(
            group_info(client, bus.keys.stream(t), sub) is not None
            for sub, topics in subs.items() for t in topics
        )

    wait_until(ready, timeout, interval=0.1, message=f"consumer groups {sorted(subs)}")


def wait_ready(*procs: WorkerProcess, timeout: float = 60) -> None:
    """Wait until each worker process logged that it is ready (its Worker has started).

    (XINFO CONSUMERS cannot tell: Redis 7.0 creates a consumer only when a read gets entries
    or does not block.)"""
    wait_until(lambda: all("is ready for action" in p.output() for p in procs), timeout,
               interval=0.1, message="worker processes ready")
