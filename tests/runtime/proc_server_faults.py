"""Worker-process handlers of the server and network fault cases (tests/reliability).

``hist`` logs the start and the commit of every delivery to the case's history
(``support.history``, folder in ``CHI_TEST_HISTORY``) with the stream entry id, the attempt
and the PID; ``data["sleep_ms"]`` holds it that long between the two.  With
``CHI_TEST_DEDUPE=1`` the subscription has ``dedupe`` on, so a commit logged twice is a
duplicate side effect that dedupe let through.
"""

from __future__ import annotations

import os
import time

from support.history import record_commit, record_start

from chi_redis import Event
from chi_redis.runtime.subscriptions import Delivery
from chi_redis.worker import bus


@bus.subscribe("hist", types=["hist.*"], dedupe=os.environ.get("CHI_TEST_DEDUPE") == "1")
def hist(event: Event, delivery: Delivery) -> None:
    extra = f"{delivery.entry_id}\t{delivery.attempt}\t{os.getpid()}"
    record_start(event.id, extra)
    sleep_ms = event.data.get("sleep_ms", 0)
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    record_commit(event.id, extra)
