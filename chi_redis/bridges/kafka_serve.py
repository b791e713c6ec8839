"""``python -m chi_redis.bridges.kafka_serve MODULE... [--threads N]``: run handler modules
on the Kafka bus (what ``chi-redis worker`` runs when ``bus.type`` is ``kafka``).

Reads the environment as :mod:`chi_redis.worker` does (``CHI_CONFIG``, ``CHI_NAMESPACE`` and
the other ``CHI_*`` variables).  Handler modules register exactly as on Redis::

    from chi_redis.worker import bus

    @bus.subscribe("welcome-email", types=["user.created"])
    def welcome(event): ...

Before importing them, this module stands in for ``chi_redis.worker`` (its ``bus`` is the
:class:`~chi_redis.bridges.kafka.KafkaEventBus`, its ``broker`` None), so one handler module
runs on either bus.  SIGTERM or SIGINT stops the consumers: handlers in flight finish, and
records not yet handled stay uncommitted for the next consumer.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from typing import Any

from ..config import load_config
from ..errors import ChiError, ConfigError
from .kafka import KafkaEventBus

__all__ = ["main"]

config: Any = None
bus: Any = None
broker: Any = None


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chi-redis worker (kafka)")
    parser.add_argument("modules", nargs="+")
    parser.add_argument("--threads", type=int, default=1, help="consumers per subscription")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    global config, bus
    args = _parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = load_config(env=os.environ)
        if config.routing.rules:
            raise ConfigError("routing.rules are not available on the Kafka bus: subscribe"
                              " in the handler modules")
        bus = KafkaEventBus.from_config(config, namespace=os.environ.get("CHI_NAMESPACE"))
        sys.modules.setdefault("chi_redis.worker", sys.modules[__name__])
        for module in args.modules:
            importlib.import_module(module)
        if not bus.subscriptions:
            raise ConfigError("the handler modules registered no subscription")
        worker = bus.worker(threads=args.threads)
        worker.start()
    except ChiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"kafka worker ready: {', '.join(sorted(bus.subscriptions))}", flush=True)
    while not done.wait(0.5):
        pass
    worker.stop()
    bus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
