"""Handler module of the RabbitMQ worker-process tests (``chi-redis worker bridges.rabbit_app``).

Each handler call appends ``<pid> <subscription> <n> <attempt>`` to ``$CHI_TEST_OUT``; an
event with ``block`` set blocks its first delivery for a minute (the test kills the worker
in the meantime).
"""

from __future__ import annotations

import os
import time
from typing import Any

from chi_redis.worker import bus

OUT = os.environ["CHI_TEST_OUT"]


def _note(sub: str, event: Any, attempt: int) -> None:
    with open(OUT, "a") as f:
        f.write(f"{os.getpid()} {sub} {event.data['n']} {attempt}\n")


@bus.subscribe("jobs", types=["job.*"], max_deliveries=5)
def jobs(event: Any, delivery: Any) -> None:
    _note("jobs", event, delivery.attempt)
    if event.data.get("block") and delivery.attempt == 1:
        time.sleep(60)


@bus.subscribe("rejects", types=["bad.*"], max_retries=0)
def rejects(event: Any, delivery: Any) -> None:
    _note("rejects", event, delivery.attempt)
    raise ValueError("refused by the handler")
