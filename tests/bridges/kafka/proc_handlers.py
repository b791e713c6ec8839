"""Handler module of the Kafka worker-process test: the same import as on Redis.

Each call appends ``start ID`` to ``$KAFKA_TEST_LOG``, waits until ``$KAFKA_TEST_GATE``
exists, then appends ``done ID``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from chi_redis import Event
from chi_redis.worker import bus

LOG = Path(os.environ["KAFKA_TEST_LOG"])
GATE = Path(os.environ["KAFKA_TEST_GATE"])


def _note(line: str) -> None:
    with LOG.open("a") as f:
        f.write(line + "\n")


@bus.subscribe("slow-job", types=["job.run"], start="earliest")
def run(event: Event) -> None:
    _note(f"start {event.id}")
    while not GATE.exists():
        time.sleep(0.05)
    _note(f"done {event.id}")
