"""``python -m chi_redis.bridges.run MODULE... [--threads N]``: a worker of a bridge bus.

What ``chi-redis worker`` runs when the config says ``bus.type: rabbitmq``: imports
:mod:`chi_redis.worker` (which builds the bus from ``CHI_CONFIG`` and the ``CHI_*``
variables), then the handler modules (they register on ``chi_redis.worker.bus``), then runs
``bus.worker()`` until SIGTERM or SIGINT, letting handlers in flight finish.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from types import FrameType

__all__ = ["main"]

# Not __name__: run as ``python -m`` this module is ``__main__``.
logger = logging.getLogger("chi_redis.bridges.run")


def main(argv: list[str] | None = None) -> int:
    """Run the handler modules' subscriptions until a signal; the exit code."""
    parser = argparse.ArgumentParser(prog="chi_redis.bridges.run")
    parser.add_argument("modules", nargs="+")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=None)
    args = parser.parse_args(argv)
    # The package's own INFO lines (pika's warnings reach stderr through logging's default).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    package = logging.getLogger("chi_redis")
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    from .. import worker as entry

    for module in args.modules:
        importlib.import_module(module)
    prefetch = args.prefetch or entry.config.bus.rabbitmq.prefetch
    runner = entry.bus.worker(threads=args.threads, prefetch=prefetch)

    def stop(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        runner.request_stop()  # the main thread waits for the handlers below

    # Before any handler can run: a stop requested while starting is a graceful one too.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.start()
    logger.info("consuming %s with %d thread(s)", ", ".join(sorted(entry.bus.subscriptions)),
                args.threads)
    runner.join()
    runner.stop(timeout_s=30)
    entry.bus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
