"""Worker-process handlers of the runtime conformance suite, for every backend.

``slow``: notes ``start ID PID`` in the file ``$CONFORMANCE_NOTES``, sleeps
``data["sleep_ms"]``, then notes ``done ID PID``.  A file (one ``O_APPEND`` write per line)
rather than the bus's server: a RabbitMQ or Kafka worker has no Redis client, and the test
reads the notes of a process it killed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from chi_redis import Event
from chi_redis.worker import bus

NOTES = Path(os.environ["CONFORMANCE_NOTES"])


def note(what: str, event_id: str) -> None:
    fd = os.open(NOTES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{what} {event_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@bus.subscribe("slow", types=["slow.job"])
def slow(event: Event) -> None:
    note("start", event.id)
    time.sleep(event.data.get("sleep_ms", 0) / 1000)
    note("done", event.id)
