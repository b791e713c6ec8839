"""Helpers shared by the benchmarks in ``bench/``: the baseline event, measuring, reporting.

Every bench prints result lines of the form::

    <name> <value> [key=value ...]

where ``<value>`` is events/s unless the name says otherwise (``_ms`` names are
milliseconds, ``.ratio`` names are chi-redis ÷ its baseline).  ``py_cpu`` is the CPU time
of the bench process (all its threads) as % of one core over the measured wall time,
``redis_cpu`` the same for redis-server (from ``INFO cpu``).

A figure that cannot be measured prints ``<name> n/a reason=...`` (:func:`report_na`).
Every bench takes ``--port``, ``--host``, ``-n`` and ``--only``; ``bench/run`` (``suite.py``)
runs them all on one redis-server and prints the table (``bench/README.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis

__all__ = [
    "ENCODER",
    "BaselineEvent",
    "Measure",
    "base_args",
    "fresh",
    "log",
    "make_event",
    "make_event_dict",
    "measured",
    "own_server",
    "percentiles",
    "redis_port",
    "report",
    "report_na",
    "report_value",
    "wanted",
]


class BaselineEvent(msgspec.Struct):
    """The event the raw redis-py baselines publish (~200 bytes as JSON, one stream field)."""

    id: str
    type: str
    topic: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    timestamp: float


ENCODER = msgspec.json.Encoder()


def make_event(i: int, ts: float | None = None) -> BaselineEvent:
    """The ``i``-th baseline event: the same data and metadata chi-redis publishes."""
    return BaselineEvent(
        id=f"{i:032x}",
        type="order.created",
        topic="orders",
        data={"order_id": i, "amount": 129.95, "sku": "SKU-0042", "qty": 3},
        metadata={"source": "bench", "attempt": 0},
        timestamp=time.time() if ts is None else ts,
    )


def make_event_dict(i: int, ts: float | None = None) -> dict[str, Any]:
    """The same event as a plain dict, for the frameworks that serialize it themselves."""
    return msgspec.structs.asdict(make_event(i, ts))


def base_args(description: str, default_n: int) -> argparse.ArgumentParser:
    """The options every bench takes; ``--port 0`` (the default) starts a server of its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--port", type=int, default=int(os.environ.get("BENCH_REDIS_PORT", "0")),
        help="a redis-server you started (default 0: start one on a free port, stop it after)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("-n", type=int, default=int(os.environ.get("BENCH_N", default_n)))
    p.add_argument("--only", default="", help="comma-separated scenario name substrings")
    return p


def wanted(args: argparse.Namespace, name: str) -> bool:
    """Whether ``--only`` selects scenario ``name`` (everything when it is empty)."""
    if not args.only:
        return True
    return any(s and s in name for s in args.only.split(","))


def _redis_cpu_seconds(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


@dataclass
class Measure:
    """Wall time plus CPU of this process and of redis-server."""

    r: redis.Redis
    wall: float = 0.0
    py_cpu: float = 0.0
    redis_cpu: float = 0.0
    _t0: float = field(default=0.0, repr=False)
    _p0: float = field(default=0.0, repr=False)
    _r0: float = field(default=0.0, repr=False)

    def start(self) -> Measure:
        self._r0 = _redis_cpu_seconds(self.r)
        self._p0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def stop(self) -> Measure:
        self.wall = time.perf_counter() - self._t0
        self.py_cpu = time.process_time() - self._p0
        self.redis_cpu = _redis_cpu_seconds(self.r) - self._r0
        return self


@contextlib.contextmanager
def measured(r: redis.Redis) -> Iterator[Measure]:
    """Measure the block: ``with measured(r) as m: ...`` then read ``m.wall`` etc."""
    m = Measure(r).start()
    try:
        yield m
    finally:
        m.stop()


def report(name: str, n: int, m: Measure, **extra: object) -> float:
    """Print ``name`` at ``n / m.wall`` events/s with the CPU split; returns the rate."""
    rate = n / m.wall if m.wall > 0 else float("nan")
    wall = m.wall or float("nan")
    cols = [
        f"{name} {rate:.0f}", f"py_cpu={100 * m.py_cpu / wall:.0f}%",
        f"redis_cpu={100 * m.redis_cpu / wall:.0f}%", f"n={n}", f"wall={m.wall:.2f}s",
    ]
    cols += [f"{k}={v}" for k, v in extra.items()]
    print("  ".join(cols), flush=True)
    return rate


def report_value(name: str, value: float, **extra: object) -> None:
    """Print one figure that is not a rate (a latency, a ratio, bytes)."""
    print("  ".join([f"{name} {value:.3f}"] + [f"{k}={v}" for k, v in extra.items()]), flush=True)


def report_na(name: str, reason: str) -> None:
    """Print that ``name`` was not measured, and why (the table shows ``n/a (reason)``)."""
    print(f"{name} n/a  reason={reason.replace(' ', '_')}", flush=True)


def percentiles(values_ms: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max of ``values_ms``."""
    v = sorted(values_ms)
    if not v:
        return float("nan"), float("nan"), float("nan")
    if len(v) == 1:
        return v[0], v[0], v[0]
    q = statistics.quantiles(v, n=100, method="inclusive")
    return q[49], q[98], v[-1]


def fresh(r: redis.Redis) -> None:
    """Empty the bench's own server (never the shared one: see :func:`redis_port`)."""
    r.flushall()


def log(*a: object) -> None:
    """Progress notes go to stderr, so stdout carries only result lines."""
    print(*a, file=sys.stderr, flush=True)


# a server of our own -------------------------------------------------------------------
def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def own_server() -> Iterator[int]:
    """Start ``redis-server --save '' --appendonly no`` on a free loopback port; yields the
    port and stops that server (by its PID) afterwards."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="chi-bench-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if redis.Redis(port=port).ping():
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        log(f"started redis-server on port {port} (pid {proc.pid})")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def redis_port(args: argparse.Namespace) -> Iterator[int]:
    """The port to bench against: ``--port`` if given (never 6379, which may be shared and
    which the benches flush), else a server of our own for the length of the run."""
    if args.port == 6379:
        raise SystemExit("refusing port 6379: benchmarks flush their server; use another port")
    if args.port:
        yield args.port
        return
    with own_server() as port:
        args.port = port
        yield port
