"""``python -m chi_redis.bridges.run MODULE... [--threads N]``: a worker of a bridge bus.

What ``chi-redis worker`` runs when the config says ``bus.type: rabbitmq``: builds the bus
from ``CHI_CONFIG`` and the ``CHI_*`` variables, installs a stand-in ``chi_redis.worker``
module holding it (``bus``, ``config``, ``broker = None``), imports the handler modules
(they register on ``chi_redis.worker.bus`` as on Redis), then runs ``bus.worker()`` until
SIGTERM or SIGINT, letting handlers in flight finish.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import types
from types import FrameType

from ..config import bridge_from_config, load_config

__all__ = ["main"]

# Not __name__: run as ``python -m`` this module is ``__main__``.
logger = logging.getLogger("chi_redis.bridges.run")


def main(argv: list[str] | None = None) -> int:
    """Run the handler modules' subscriptions until a signal; the exit code."""
    parser = argparse.ArgumentParser(prog="chi_redis.bridges.run")
    parser.add_argument("modules", nargs="+")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    # The package's own INFO lines (pika's warnings reach stderr through logging's default).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    package = logging.getLogger("chi_redis")
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    config = load_config(env=os.environ)
    bus = bridge_from_config(config)
    # Handler modules register with `from chi_redis.worker import bus`; that module builds
    # the Redis bus and its Dramatiq broker, so they get this stand-in instead.
    entry = types.ModuleType("chi_redis.worker", "The bridge bus of chi_redis.bridges.run.")
    entry.config, entry.bus, entry.broker = config, bus, None  # type: ignore[attr-defined]
    sys.modules["chi_redis.worker"] = entry
    for module in args.modules:
        importlib.import_module(module)
    runner = bus.worker(threads=args.threads)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        stopping.set()

    # Before any handler can run: a stop requested while starting is a graceful one too.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.start()
    logger.info("consuming with %d thread(s) on %r", args.threads, bus)
    while not stopping.wait(0.5):
        pass
    runner.stop(timeout_s=30)  # handlers in flight finish; the rest goes back to the queues
    bus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
