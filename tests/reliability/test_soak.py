"""The slow tier (``soak`` marker: ``scripts/reliability-soak``, i.e. ``pytest --soak``).

- F8: a million events through Redis with ``maxmemory 512mb noeviction`` and AOF
  ``everysec``, memory bounded by the project's retention (``ops/retention.py``: a length
  policy that never trims past what a group still needs): ``used_memory`` plateaus, worker
  RSS stays flat after warm-up, nothing is lost; and the same length policy applied
  *unsafely* (a plain ``XTRIM MAXLEN``) under a slow consumer: the pending entries it cut
  are counted (``chi_trimmed_unprocessed_total`` and a warning), never silent.
- Repeated kills: ``kill -9`` of a worker 10 times under a steady publish; lost 0,
  duplicates within what was in flight at the kills.
- A soak at a steady rate (10 minutes): the lag stays flat.

Sizes come from the environment, so the tier can run briefly while developing:
``CHI_SOAK_EVENTS`` (1 000 000), ``CHI_SOAK_KILLS`` (10), ``CHI_SOAK_S`` (600),
``CHI_SOAK_RATE`` (events/s of the soak, 300).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from support import wait_until
from support.figures import record
from support.history import History
from support.processes import Workers, wait_ready
from support.runtime import group_info
from support.servers import RedisServer, RedisServers

from chi_redis import EventBus
from chi_redis.ops.retention import Policy, trim_topic

from .steady import Sampler, SteadyProducer, slope_per_s, thin

pytestmark = [pytest.mark.redis, pytest.mark.soak]

MIB = 1024 * 1024


def knob(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def own_redis(redis_servers: RedisServers) -> tuple[RedisServer, EventBus]:
    server = redis_servers.start("--maxmemory", "512mb", "--maxmemory-policy", "noeviction",
                                 "--appendonly", "yes", "--appendfsync", "everysec")
    return server, EventBus(server.client(socket_timeout=60), namespace="soak")


class Retention(threading.Thread):
    """Applies ``policy`` to the topic every ``interval`` s (what ``retention run`` does)."""

    def __init__(self, bus: EventBus, policy: Policy, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.bus, self.policy, self.interval = bus, policy, interval
        self.trimmed = 0
        self.held_back_max = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            r = trim_topic(self.bus, "steady", self.policy)
            self.trimmed += r.trimmed
            self.held_back_max = max(self.held_back_max, r.held_back)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=120)


def flat_after_warmup(series: list[tuple[float, int]], warm_frac: float = 0.25) -> float:
    """Growth of the peak after warm-up over the value at the end of warm-up (0.05 = 5 %)."""
    if len(series) < 4:
        return 0.0
    warm = series[int(len(series) * warm_frac)][1]
    return max(v for _t, v in series[int(len(series) * warm_frac):]) / warm - 1


def test_f8_million_events_memory_bounded_by_safe_retention(
        redis_servers: RedisServers, tmp_path: Path) -> None:
    total = int(knob("CHI_SOAK_EVENTS", 1_000_000))
    rate = knob("CHI_SOAK_F8_RATE", 8000)  # what 2 workers drain on 2 shared cores
    cap = max(1000, min(100_000, total // 4))
    server, bus = own_redis(redis_servers)
    history = History(tmp_path / "history")
    workers = Workers(tmp_path, server.url, "soak")
    began = time.monotonic()
    try:
        procs = [workers.start("reliability.proc_steady", threads=4, **history.env())
                 for _ in range(2)]
        wait_ready(*procs)
        # 100 000 kept (a short run keeps a quarter of what it publishes: it still trims).
        retention = Retention(bus, Policy(max_len=cap))
        sampler = Sampler(bus.client, bus.keys.stream("steady"), ["fast"], procs,
                          interval=max(0.5, min(2.0, total / rate / 30)))
        producer = SteadyProducer(bus, history, rate, limit=total, size=32)
        for t in (producer, sampler, retention):
            t.start()
        producer.join(timeout=total / rate * 10 + 60)
        assert not producer.is_alive(), "the producer did not finish"
        publish_s = time.monotonic() - began
        wait_until(history.committed_all_ok, 600, "every event handled", interval=2)
        e2e_s = time.monotonic() - began
        samples = sampler.stop()
        retention.stop()
        xlen = bus.client.xlen(bus.keys.stream("steady"))
    finally:
        workers.stop()
    verdict = history.check()
    mem = samples.used_memory
    half = len(mem) // 2
    record("F8-million-events-safe-retention", **verdict.figures(), events=total, max_len=cap,
           publish_per_s=round(producer.sent / publish_s), e2e_per_s=round(total / e2e_s),
           used_memory_peak_mib=round(samples.peak(mem) / MIB, 1),
           used_memory_first_half_peak_mib=round(samples.peak(mem[:half]) / MIB, 1),
           used_memory_second_half_peak_mib=round(samples.peak(mem[half:]) / MIB, 1),
           rss_growth_after_warmup=round(flat_after_warmup(samples.rss), 4),
           rss_peak_mib=round(samples.peak(samples.rss) / MIB, 1), trimmed=retention.trimmed,
           held_back_max=retention.held_back_max, xlen_end=xlen,
           lag_peak=samples.peak(samples.lag["fast"]), publish_errors=len(producer.errors))
    verdict.assert_nothing_lost()
    assert producer.errors == []
    # Bounded: the second half (another total/2 events) needs no more memory than the first.
    assert samples.peak(mem[half:]) <= samples.peak(mem[:half]) * 1.2 + 8 * MIB, mem
    assert samples.peak(mem) < 400 * MIB
    assert flat_after_warmup(samples.rss) < 0.10, samples.rss


def test_f8_unsafe_length_trim_under_a_slow_consumer_is_counted(
        redis_servers: RedisServers, tmp_path: Path) -> None:
    server, bus = own_redis(redis_servers)
    history = History(tmp_path / "history")
    stream = bus.keys.stream("steady")
    workers = Workers(tmp_path, server.url, "soak")
    try:
        slow = workers.start("reliability.proc_steady", threads=2, CHI_TEST_SUBS="slow",
                             CHI_TEST_SLOW_MS="5", **history.env())
        wait_ready(slow)
        producer = SteadyProducer(bus, history, 2000, limit=20_000)
        producer.start()
        producer.join(timeout=120)
        # The project's length policy holds back what the slow group still needs.
        safe = trim_topic(bus, "steady", Policy(max_len=1000))
        info = group_info(bus.client, stream, "slow")
        assert info is not None and safe.held_back > 0 and safe.held_by == "slow"
        first = bus.client.xrange(stream, "-", "+", count=1)[0][0].decode()
        assert first >= (safe.held_at or "")  # nothing the group needs was trimmed
        # The same policy applied unsafely, with the slow worker dead (its pending idle).
        for pid in slow.children():
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not slow.alive(), 30, "the killed worker's master exited")
        handled_before = int(bus.client.get("soak:t:slow") or 0)
        pending = int(group_info(bus.client, stream, "slow")["pending"])  # type: ignore[index]
        bus.client.xtrim(stream, maxlen=1000, approximate=False)
        again = workers.start("reliability.proc_steady", threads=2, CHI_TEST_SUBS="slow",
                              CHI_TEST_SLOW_MS="5", **history.env())
        wait_until(lambda: "were trimmed before they were processed" in again.output(), 60,
                   "the reclaim sweep to count the trimmed pending entries")
        wait_until(lambda: group_info(bus.client, stream, "slow")["pending"] == 0,  # type: ignore[index]
                   120, "the slow group's pending list emptied")
        # One warning per sweep that found some: their counts add up.
        counted = sum(int(x.split(" pending entries")[0].split()[-1])
                      for x in again.output().splitlines() if "were trimmed before" in x)
    finally:
        workers.stop()
    record("F8-length-policy-slow-consumer", published=producer.sent,
           safe_held_back=safe.held_back, safe_trimmed=safe.trimmed, held_by=safe.held_by,
           handled_before_trim=handled_before, pending_at_trim=pending,
           trimmed_unprocessed_counted=counted, lag_after_trim=str(info.get("lag")))
    assert counted == pending > 0


def test_repeated_kill_9_of_a_worker_loses_nothing(
        redis_servers: RedisServers, tmp_path: Path) -> None:
    kills = int(knob("CHI_SOAK_KILLS", 10))
    server = redis_servers.start()
    bus = EventBus(server.client(), namespace="soak")
    stream = bus.keys.stream("steady")
    history = History(tmp_path / "history")
    workers = Workers(tmp_path, server.url, "soak")
    in_flight: list[int] = []
    try:
        # 5 ms of work per event: a few entries are in flight in each worker at any time.
        victim = workers.start("reliability.proc_steady", threads=4, CHI_TEST_WORK_MS="5",
                               **history.env())
        other = workers.start("reliability.proc_steady", threads=4, CHI_TEST_WORK_MS="5",
                              **history.env())
        wait_ready(victim, other)
        victim.supervise(max_restarts=kills + 1)
        producer = SteadyProducer(bus, history, 500)
        producer.start()
        for _ in range(kills):
            wait_until(lambda: victim.output().count("is ready for action") >= victim.starts,
                       60, "the restarted worker ready")
            # A second of steady work, so the worker holds entries when it dies.
            wait_until(lambda n=producer.sent: producer.sent >= n + 500, 60, "more published")
            info = group_info(bus.client, stream, "fast")
            in_flight.append(int(info["pending"]) if info else 0)
            starts = victim.starts
            for pid in victim.children():
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda s=starts: victim.starts > s, 60, "the supervisor restarted it")
        producer.stop()
        wait_until(history.committed_all_ok, 120, "every event handled", interval=0.5)
    finally:
        workers.stop()
    verdict = history.check()
    record("repeated-kill-9", **verdict.figures(), kills=kills, in_flight_at_kills=in_flight,
           in_flight_sum=sum(in_flight), restarts=victim.starts - 1)
    verdict.assert_nothing_lost(max_duplicated=sum(in_flight))


def test_soak_at_a_steady_rate_keeps_the_lag_flat(
        redis_servers: RedisServers, tmp_path: Path) -> None:
    seconds = knob("CHI_SOAK_S", 600)
    rate = knob("CHI_SOAK_RATE", 300)
    server = redis_servers.start("--maxmemory", "512mb", "--maxmemory-policy", "noeviction")
    bus = EventBus(server.client(), namespace="soak")
    history = History(tmp_path / "history")
    workers = Workers(tmp_path, server.url, "soak")
    try:
        worker = workers.start("reliability.proc_steady", threads=4, **history.env())
        wait_ready(worker)
        interval = max(1.0, min(5.0, seconds / 60))
        sampler = Sampler(bus.client, bus.keys.stream("steady"), ["fast"], [worker],
                          interval=interval)
        retention = Retention(bus, Policy(max_len=50_000), interval=5)
        producer = SteadyProducer(bus, history, rate, limit=int(rate * seconds))
        for t in (producer, sampler, retention):
            t.start()
        producer.join(timeout=seconds * 3 + 60)
        assert not producer.is_alive(), "the producer did not finish"
        samples = sampler.stop()
        retention.stop()
        wait_until(history.committed_all_ok, 120, "every event handled", interval=0.5)
    finally:
        workers.stop()
    verdict = history.check()
    # The backlog: entries not yet read plus those read and not yet acked.
    backlog = [(t, n + p) for (t, n), (_t, p) in zip(
        samples.lag["fast"], samples.pending["fast"], strict=True)]
    slope = slope_per_s(backlog[len(backlog) // 10:])  # after warm-up
    rss_growth = flat_after_warmup(samples.rss)
    record("soak-steady-rate", **verdict.figures(), seconds=seconds, rate=rate,
           sample_interval_s=interval, backlog_peak=samples.peak(backlog),
           backlog_slope_per_s=round(slope, 4), rss_growth_after_warmup=round(rss_growth, 4),
           backlog_curve=thin(backlog), trimmed=retention.trimmed)
    verdict.assert_nothing_lost()
    # Flat: a trend of less than 1 % of the rate per second would take 100 s to add one
    # second of backlog; a peak below two seconds of publishing.
    assert abs(slope) < rate * 0.01, (slope, backlog)
    assert samples.peak(backlog) < rate * 2, backlog
    assert rss_growth < 0.10, samples.rss
