"""Worker-process handlers of the worker-fault reliability cases (tests/reliability).

Only the subscriptions named in ``CHI_TEST_SUBS`` (comma-separated) are declared, so each
case's workers consume only their own queues.  Every handler logs its ``start`` and
``commit`` to the case's history (``support.history``, folder in ``CHI_TEST_HISTORY``) under
``<subscription>:<event id>``, so two subscriptions of one event are counted apart; a
middleware logs every delivery of those queues (deduplicated or not) to the same folder
(``delivery-<pid>.log``).  The last column of a line is ``<pid> <monotonic time>``.

- ``kill`` (dedupe), ``lease``, ``lease-dd`` (dedupe), ``term``, ``twice``, ``twice-dd``
  (dedupe): sleep ``data["sleep_ms"]`` between start and commit (``data["again_ms"]``, if
  given, in runs after the first);
- ``poison-exc``: ``poison.exc`` raises ValueError (a long message with a URL password)
  until the key ``<ns>:t:fixed`` exists;
  ``poison-exit``: ``poison.exit`` calls ``os._exit(1)``; ``poison-hang``: ``poison.hang``
  sleeps past the 500 ms time limit; ``poison.ok`` is handled by all three (each sleeps
  ``data["sleep_ms"]`` first, if given);
- ``f4``: ``f4.order`` payloads decode to :class:`Order` (``f4.*`` to plain values).

``CHI_TEST_NO_LEASE_REFRESH=1`` turns lease refresh off (the F14 negative control).
``CHI_TEST_COUNT_DELIVERIES=1`` brings back the old ``max_deliveries`` guard, which counted
deliveries instead of handler starts, and ``CHI_TEST_NOT_ALONE=1`` lets an entry delivered
again run beside others (the negative controls of test_crash_readahead).
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
import msgspec
from support.history import ENV, record_commit, record_start

from chi_redis import Event, event_type
from chi_redis.runtime.consumer import StreamsConsumer
from chi_redis.runtime.crashes import CrashGuard
from chi_redis.worker import broker, bus

_client = bus.client
_ns = bus.namespace
SUBS = {s for s in os.environ.get("CHI_TEST_SUBS", "").split(",") if s}
SECRET_URL = "redis://app:hunter2-canary@db.internal:6379/0"

if os.environ.get("CHI_TEST_NO_LEASE_REFRESH") == "1":
    StreamsConsumer._refresh_leases = lambda self: None  # type: ignore[method-assign]
if os.environ.get("CHI_TEST_NOT_ALONE") == "1":
    StreamsConsumer._pop = lambda self: self._local.popleft()  # type: ignore[method-assign]
if os.environ.get("CHI_TEST_COUNT_DELIVERIES") == "1":
    CrashGuard.exhausted = (  # type: ignore[method-assign]
        lambda self, deliveries, starts: deliveries > self.max_deliveries)


@event_type("f4.order")
class Order(msgspec.Struct):
    n: int
    name: str


class CountDeliveries(dramatiq.Middleware):
    """Logs each delivery of an event of the test's queues, before dedupe or the handler:
    ``deliver <subscription>:<event id> <pid> <monotonic>`` in ``delivery-<pid>.log`` of the
    history folder (one ``O_APPEND`` write, kept across ``kill -9`` like the history's)."""

    def before_process_message(self, broker: Any, message: Any) -> None:
        if message.queue_name not in SUBS or len(message.args) != 2:
            return
        fields = message.args[1]
        raw = fields.get("id") if isinstance(fields, dict) else None
        if not isinstance(raw, bytes):
            return
        line = f"deliver\t{message.queue_name}:{raw.decode()}\t{_stamp()}\n".encode()
        path = os.path.join(os.environ[ENV], f"delivery-{os.getpid()}.log")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


broker.add_middleware(CountDeliveries())


def _stamp() -> str:
    """``<pid> <CLOCK_MONOTONIC>``: which process, and when (comparable across processes)."""
    return f"{os.getpid()} {time.monotonic():.6f}"


def _sleeper(name: str) -> Any:
    def handle(event: Event) -> None:
        key = f"{name}:{event.id}"
        record_start(key, _stamp())
        sleep_ms = event.data.get("sleep_ms", 0)
        if "again_ms" in event.data and not _client.set(f"{_ns}:t:ran:{key}", 1, nx=True):
            sleep_ms = event.data["again_ms"]  # a run after the first
        end = time.monotonic() + sleep_ms / 1000
        while time.monotonic() < end:  # in small steps: Dramatiq's time limit can interrupt
            time.sleep(0.02)
        record_commit(key, _stamp())

    handle.__name__ = f"handle_{name.replace('-', '_')}"
    return handle


for _name, _types, _dedupe in (
    ("kill", ["kill.job"], True),
    ("lease", ["lease.job"], False),
    ("lease-dd", ["lease.job"], True),
    ("term", ["term.job"], False),
    ("twice", ["twice.job"], False),
    ("twice-dd", ["twice.job"], True),
):
    if _name in SUBS:
        bus.subscribe(_name, types=_types, dedupe=_dedupe)(_sleeper(_name))


def _poison(name: str) -> Any:
    def handle(event: Event) -> None:
        key = f"{name}:{event.id}"
        record_start(key, str(os.getpid()))
        time.sleep(event.data.get("sleep_ms", 0) / 1000)
        if event.type == "poison.exc" and not _client.exists(f"{_ns}:t:fixed"):
            raise ValueError(f"cannot charge via {SECRET_URL}: " + "x" * 3000)
        if event.type == "poison.exit":
            os._exit(1)
        if event.type == "poison.hang":
            while True:
                time.sleep(0.02)
        record_commit(key, str(os.getpid()))

    handle.__name__ = f"handle_{name.replace('-', '_')}"
    return handle


for _name, _bad in (("poison-exc", "exc"), ("poison-exit", "exit"), ("poison-hang", "hang")):
    if _name in SUBS:
        bus.subscribe(_name, types=["poison.ok", f"poison.{_bad}"], max_retries=2,
                      min_backoff_ms=20, max_backoff_ms=100,
                      time_limit_ms=500 if _bad == "hang" else None)(_poison(_name))

if "f4" in SUBS:
    @bus.subscribe("f4", types=["f4.*"], max_retries=2, min_backoff_ms=20, max_backoff_ms=100)
    def f4(event: Event) -> None:
        key = f"f4:{event.id}"
        record_start(key)
        assert event.type != "f4.order" or isinstance(event.data, Order)
        record_commit(key)
