"""replay --rate spreads deliveries evenly from the first moment; SIGINT/SIGTERM at any
moment leave a checkpoint that a rerun resumes exactly (every event once in total).

The pacing tests read the chunks back from Redis rather than timing anything: every
delivery is one Lua call, and the entries it appends share one millisecond in their
stream ids (Redis time does not move inside a script), so grouping a stream by the
millisecond of its ids gives the sizes of the chunks delivered.  A lower bound on the
duration (a rate cannot be beaten) is the only figure compared with a clock.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from support import FAST, REDIS_URL, wait_until
from support.processes import ROOT, clean_env

from chi_redis import Event, EventBus
from chi_redis.ops.archive_replay import replay_archive
from chi_redis.ops.replay import (
    PrintTarget,
    QueueTarget,
    ReplayInterrupted,
    ReplayOptions,
    RepublishTarget,
    replay,
)
from chi_redis.runtime.broker import BrokerOptions, StreamsBroker

from .conftest import CHI, publish_n
from .test_replay import queued_indexes, register

pytestmark = pytest.mark.redis  # every test runs against the real server


def chunks(client: redis.Redis, key: str) -> list[tuple[int, int]]:
    """(millisecond, entries appended in it) of stream ``key``, in order."""
    per_ms: Counter[int] = Counter(int(sid.split(b"-")[0]) for sid, _ in client.xrange(key))
    return sorted(per_ms.items())


def server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def assert_paced(got: list[tuple[int, int]], n: int, rate: float, t0_ms: int) -> None:
    """``n`` events in chunks of about rate/10, spread over at least (n - chunk)/rate."""
    sizes = [c for _, c in got]
    assert sum(sizes) == n
    # About rate/10 per chunk.  Generous for a loaded box: a Redis server that stalls can
    # run a few queued deliveries within one millisecond.
    assert statistics.median(sizes) <= rate / 10, sizes
    assert max(sizes) <= rate * 0.4, sizes
    assert len(sizes) >= n / (rate / 5), sizes
    first, last = got[0][0], got[-1][0]
    # Never faster than the rate (all workers together) ...
    assert last - first >= 0.8 * 1000 * (n - rate / 10) / rate, (first, last)
    # ... and the first chunk went at once, not after a batch's worth of waiting: before
    # the rest took (a 1,000-event batch would send everything at once, after it all).
    assert first - t0_ms < last - first, (t0_ms, first, last)


@pytest.mark.parametrize("workers", [1, 4])
def test_rate_spreads_deliveries_evenly_from_the_start(
    bus: EventBus, client: redis.Redis, workers: int
) -> None:
    register(bus, "audit")
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    n, rate = 600, 250.0
    publish_n(bus, n)
    t0 = server_ms(client)
    report = replay(bus, QueueTarget(bus, "audit"), topics=["order"], options=ReplayOptions(
        batch_size=1000, rate=rate, workers=workers, checkpoint="paced"))
    assert report.delivered == n
    assert_paced(chunks(client, bus.keys.queue("audit")), n, rate, t0)
    assert Counter(queued_indexes(client, bus, "audit")) == Counter(range(n))


def test_rate_paces_republish_and_archive_replays(
    bus: EventBus, client: redis.Redis, tmp_path: Path
) -> None:
    from chi_redis.store.files import FileEventStore

    n, rate = 300, 200.0
    base = datetime(2024, 7, 1, tzinfo=UTC)
    events = [Event(type="order.placed", data={"i": i}, timestamp=base + timedelta(seconds=i))
              for i in range(n)]
    sids = bus.publish_batch(events)
    t0 = server_ms(client)
    replay(bus, RepublishTarget(bus), topics=["order"],
           options=ReplayOptions(batch_size=500, rate=rate))
    copies = [c for c in chunks(client, bus.keys.stream("order"))
              if c[0] > int(sids[-1].split("-")[0])]
    assert_paced(copies, n, rate, t0)

    register(bus, "audit", types=("order.*",))
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    store = FileEventStore(tmp_path / "archive")
    store.store_many(events)
    try:
        t0 = server_ms(client)
        report = replay_archive(store, QueueTarget(bus, "audit"), bus.codec, topics=["order"],
                                options=ReplayOptions(batch_size=500, rate=rate), bus=bus)
    finally:
        store.close()
    assert report.delivered == n
    assert_paced(chunks(client, bus.keys.queue("audit")), n, rate, t0)
    assert queued_indexes(client, bus, "audit") == list(range(n))


def test_stop_event_ends_the_run_at_a_batch_boundary_and_a_rerun_resumes_exactly(
    bus: EventBus,
) -> None:
    sids = publish_n(bus, 400)
    first, second = _Lines(), _Lines()
    stop = threading.Event()
    opts = ReplayOptions(batch_size=50, rate=1000.0, checkpoint="stop-1", stop=stop)
    threading.Thread(target=lambda: (wait_until(lambda: len(first.ids()) >= 60,
                                                message="some lines printed"),
                                     stop.set()), daemon=True).start()
    with pytest.raises(ReplayInterrupted) as info:
        replay(bus, PrintTarget(bus, first), topics=["order"], options=opts)
    assert "interrupted" in str(info.value)
    assert 60 <= len(first.ids()) < 400
    report = replay(bus, PrintTarget(bus, second), topics=["order"],
                    options=ReplayOptions(batch_size=50, checkpoint="stop-1"))
    assert report.resumed and report.total_delivered == 400
    assert first.ids() + second.ids() == sids  # no gap, no line printed twice


class _Lines:
    """A binary sink collecting printed JSON lines (thread-safe enough for one writer)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, b: bytes) -> int:
        self.buf += b
        return len(b)

    def flush(self) -> None:
        pass

    def ids(self) -> list[str]:
        text = bytes(self.buf).decode()
        return [json.loads(line)["stream_id"] for line in text.splitlines()]


# SIGINT / SIGTERM of the real command ----------------------------------------------------
class Running:
    """``chi-redis replay ...`` as a subprocess; its stdout read on a thread."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, env=clean_env(), cwd=str(ROOT),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = bytearray()
        self.err = bytearray()
        # Both pipes are drained by threads of their own; ``communicate`` would read stdout
        # too and take the last lines away from ``out``.
        self.readers = [threading.Thread(target=self._read, args=(pipe, buf), daemon=True)
                        for pipe, buf in ((self.proc.stdout, self.out),
                                          (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(pipe: Any, buf: bytearray) -> None:
        for line in pipe:
            buf += line

    def lines(self) -> int:
        return bytes(self.out).count(b"\n")

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        for reader in self.readers:
            reader.join(timeout=30)
            assert not reader.is_alive(), "the replay's output did not end"
        return self.proc.returncode, bytes(self.err).decode()


def _argv(ns: str, *args: str) -> list[str]:
    return [str(CHI), "--redis-url", REDIS_URL, "--namespace", ns, *args]


@pytest.mark.parametrize(("target", "sig", "workers", "after"), [
    ("to", signal.SIGINT, "1", 30),
    ("to", signal.SIGTERM, "4", 700),
    ("republish", signal.SIGTERM, "1", 1),
    ("print", signal.SIGINT, "1", 450),
    ("print", signal.SIGTERM, "1", 1),
])
def test_signal_at_any_moment_then_resume_delivers_every_event_once(
    bus: EventBus, client: redis.Redis, ns: str, target: str, sig: int, workers: str,
    after: int,
) -> None:
    n = 3000  # 3 s at the rate: the signal comes well before the end
    sids = publish_n(bus, n)
    if target == "to":
        register(bus, "audit")
        StreamsBroker(bus, options=BrokerOptions(**FAST))
    chosen = {"to": ["--to", "audit"], "republish": ["--republish"], "print": ["--print"]}
    args = ["replay", *chosen[target], "--topic", "order", "--checkpoint", "sig-1",
            "--workers", workers]
    run = Running(_argv(ns, *args, "--rate", "1000/s"))
    delivered: Callable[[], int] = {
        "to": lambda: client.xlen(bus.keys.queue("audit")),
        "republish": lambda: client.xlen(bus.keys.stream("order")) - n,
    }.get(target, run.lines)
    wait_until(lambda: delivered() >= after or run.proc.poll() is not None, timeout=60,
               message=f"{after} events delivered")
    code, err = run.stop(sig)
    assert code == 128 + sig, err  # 130 for SIGINT, 143 for SIGTERM
    assert "interrupted" in err and "resume" in err
    stopped_at = delivered()
    assert after <= stopped_at < n, "the replay finished before the signal"
    ckpt = client.hgetall(bus.keys.checkpoint("sig-1"))
    assert int(ckpt[b"delivered"]) == stopped_at  # the checkpoint is exactly where it stopped

    rest = subprocess.run(_argv(ns, *args), env=clean_env(), cwd=str(ROOT),
                          capture_output=True, timeout=120)
    assert rest.returncode == 0, rest.stderr
    assert f"{n} delivered in total (resumed)" in rest.stdout.decode() + rest.stderr.decode()
    if target == "to":
        assert Counter(queued_indexes(client, bus, "audit")) == Counter(range(n))
    elif target == "republish":
        copies = bus.store.load_by_topic("order", limit=3 * n)[n:]
        originals = [e.id for e in bus.store.load_by_topic("order", limit=n)]
        assert [c.metadata["chi_replay_of"] for c in copies] == originals
    else:
        printed = [json.loads(x)["stream_id"]
                   for x in (bytes(run.out) + rest.stdout).decode().splitlines()]
        assert printed == sids


def test_signal_then_resume_of_an_archive_replay(
    bus: EventBus, client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    from chi_redis.store.files import FileEventStore

    n = 2400
    base = datetime(2024, 7, 1, tzinfo=UTC)
    store = FileEventStore(tmp_path / "archive")
    store.store_many([Event(type="order.placed", data={"i": i},
                            timestamp=base + timedelta(milliseconds=i)) for i in range(n)])
    store.close()
    config = tmp_path / "chi.yaml"
    config.write_text("events:\n  store:\n    enabled: true\n    type: file\n"
                      f"    file: {{directory: '{tmp_path / 'archive'}'}}\n")
    register(bus, "audit", types=("order.*",))
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    args = ["--config", str(config), "replay", "--source", "archive", "--to", "audit",
            "--topic", "order", "--checkpoint", "arc-sig"]

    run = Running(_argv(ns, *args, "--rate", "1000/s"))
    wait_until(lambda: client.xlen(bus.keys.queue("audit")) >= 100
               or run.proc.poll() is not None, timeout=60, message="100 events delivered")
    code, err = run.stop(signal.SIGINT)
    assert code == 130 and "interrupted" in err, err
    assert client.xlen(bus.keys.queue("audit")) < n

    rest = subprocess.run(_argv(ns, *args), env=clean_env(), cwd=str(ROOT),
                          capture_output=True, text=True, timeout=120)
    assert rest.returncode == 0, rest.stderr
    assert queued_indexes(client, bus, "audit") == list(range(n))
