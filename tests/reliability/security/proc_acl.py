"""Worker-process handlers of the ACL test (test_acl_users.py), run as the worker user.

They write nothing to Redis themselves (the worker user may only run what the runtime
needs); what happened is seen from the server: groups drained, dead letters written.
``acl.crash`` kills the worker process the first time (a marker file in
``$ACL_TEST_DIR``), so a restarted worker must reclaim it; ``acl.slow`` outlives the lease
(the lease is refreshed); ``acl.fail`` always fails (retried once, then dead-lettered),
in the batch subscription too (``BatchFailed``: the batch is settled by a script).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from chi_redis import BatchFailed, Event
from chi_redis.worker import bus

_DIR = Path(os.environ["ACL_TEST_DIR"])


@bus.subscribe("acl-one", topics=["acl"], max_retries=1, min_backoff_ms=10,
               max_backoff_ms=20, dedupe=True)
def one(event: Event) -> None:
    if event.type == "acl.fail":
        raise RuntimeError("refused on purpose")
    if event.type == "acl.slow":
        time.sleep(event.data["sleep_ms"] / 1000)
    if event.type == "acl.crash":
        marker = _DIR / f"crashed-{event.id}"
        if not marker.exists():
            marker.touch()
            os._exit(1)


@bus.subscribe("acl-part", topics=["aclp"], start="earliest")
def part(event: Event) -> None:
    """A partitioned topic's consumer: ownership rounds (``partowner.lua``) as this user."""


@bus.subscribe("acl-batch", topics=["acl"], batch_size=10, batch_wait_ms=50, max_retries=0)
def batch(events: list[Event]) -> None:
    failed = [e for e in events if e.type == "acl.fail"]
    if failed:
        raise BatchFailed(failed, RuntimeError("refused on purpose"))
