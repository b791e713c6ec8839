"""Worker-process handlers of the load, backpressure and soak cases.

Imported by ``dramatiq chi_redis.worker reliability.proc_steady``.  ``CHI_TEST_SUBS`` (comma
separated, default ``fast``) says which subscriptions of topic ``steady`` this process runs:

- ``fast``: logs start and commit in the history (``CHI_TEST_HISTORY``), with
  ``CHI_TEST_WORK_MS`` (default 0) of work between them;
- ``slow``: sleeps ``CHI_TEST_SLOW_MS`` (default 50) per event and counts it in Redis
  (``<ns>:t:slow``), no history: a lagging group that is never expected to catch up.

``CHI_TEST_DEDUPE=1`` turns ``dedupe`` on for ``fast``.
"""

from __future__ import annotations

import os
import time

from support.history import record_commit, record_start

from chi_redis import Event
from chi_redis.worker import bus

_client = bus.client
_ns = bus.namespace
_subs = set(os.environ.get("CHI_TEST_SUBS", "fast").split(","))
_slow_s = int(os.environ.get("CHI_TEST_SLOW_MS", "50")) / 1000
_work_s = int(os.environ.get("CHI_TEST_WORK_MS", "0")) / 1000

if "fast" in _subs:

    @bus.subscribe("fast", topics=["steady"], start="earliest",
                   dedupe=os.environ.get("CHI_TEST_DEDUPE") == "1")
    def fast(event: Event) -> None:
        record_start(event.id)
        if _work_s:
            time.sleep(_work_s)
        record_commit(event.id)

if "slow" in _subs:

    @bus.subscribe("slow", topics=["steady"], start="earliest")
    def slow(event: Event) -> None:
        time.sleep(_slow_s)
        _client.incr(f"{_ns}:t:slow")
