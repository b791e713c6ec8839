"""F13: a slow subscription next to a fast one on the same topic, under a steady producer.

Own redis-server; one worker process runs both subscriptions (``reliability.proc_steady``:
``fast`` logs to the history, ``slow`` sleeps 50 ms per event) on 4 threads.  The producer
publishes ~200 events/s for ``CHI_F13_S`` seconds (default 10): far beyond what ``slow``
handles (~80/s).  Expected: ``fast`` keeps up (lag stays low, nothing lost), ``slow`` lags
in Redis, not in the worker (its pending list stays within its prefetch window), and the
worker's memory does not grow with the backlog.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import wait_until
from support.figures import record
from support.history import History
from support.processes import Workers, wait_ready
from support.servers import RedisServers

from chi_redis import EventBus

from .steady import Sampler, SteadyProducer, thin

pytestmark = pytest.mark.redis

THREADS = 4
RATE = 200
# Dramatiq's prefetch is 2 messages per worker thread (slow handlers never get the adaptive
# window of fast ones); acks of finished ones are buffered until the next read, so the
# pending list may hold at most one more window (docs/design.md §5.2, §7.1).
PREFETCH = 2 * THREADS
PEL_BOUND = 2 * PREFETCH


def test_f13_slow_subscription_lags_in_redis_not_in_the_worker(
        redis_servers: RedisServers, tmp_path: Path) -> None:
    seconds = float(os.environ.get("CHI_F13_S", "10"))
    server = redis_servers.start()
    client = server.client()
    history = History(tmp_path / "history")
    bus = EventBus(client, namespace="f13")
    workers = Workers(tmp_path, server.url, "f13")
    try:
        worker = workers.start("reliability.proc_steady", threads=THREADS,
                               CHI_TEST_SUBS="fast,slow", **history.env())
        wait_ready(worker)
        stream = bus.keys.stream("steady")
        sampler = Sampler(client, stream, ["fast", "slow"], [worker], interval=0.5)
        producer = SteadyProducer(bus, history, RATE, limit=int(RATE * seconds))
        producer.start()
        sampler.start()
        producer.join(timeout=seconds * 10)
        assert not producer.is_alive(), "the producer did not finish"
        wait_until(history.committed_all_ok, 60, "fast drained every event", interval=0.2)
        samples = sampler.stop()
        slow_done = int(client.get("f13:t:slow") or 0)
    finally:
        workers.stop()
    verdict = history.check()
    fast_lag = samples.peak(samples.lag["fast"])
    slow_pel = samples.peak(samples.pending["slow"])
    slow_lag = samples.peak(samples.lag["slow"])
    rss = [v for _t, v in samples.rss]
    warm = rss[len(rss) // 4] if rss else 0
    record("F13-backpressure", **verdict.figures(), seconds=seconds, rate=RATE,
           published=producer.sent, fast_peak_lag=fast_lag, slow_peak_pending=slow_pel,
           slow_peak_lag=slow_lag, slow_handled=slow_done, pel_bound=PEL_BOUND,
           rss_after_warmup=warm, rss_peak=max(rss, default=0),
           lag_curve_fast=thin(samples.lag["fast"]), lag_curve_slow=thin(samples.lag["slow"]))
    verdict.assert_nothing_lost()
    # The backlog is in Redis: slow fell far behind, yet held only its prefetch window.
    assert slow_lag > 10 * PEL_BOUND, slow_lag
    assert 0 < slow_pel <= PEL_BOUND, samples.pending["slow"]
    # fast is not held up behind slow: its lag never exceeds a second of publishing.
    assert fast_lag <= RATE, samples.lag["fast"]
    assert max(rss) <= warm * 1.25, samples.rss
