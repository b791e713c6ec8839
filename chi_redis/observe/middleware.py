"""The worker's health endpoints: a Dramatiq middleware serving ``/healthz`` and ``/readyz``.

Dramatiq's Prometheus middleware serves the worker's metrics from a process forked off the
``dramatiq`` master, which knows nothing of the subscriptions; readiness must be answered by
a process that does.  So each worker process starts, after it booted, a thread with a
:class:`~chi_redis.observe.server.HealthServer` on ``monitoring.health_port``
(``CHI_HEALTH_PORT``, default 9181) whose ``/readyz`` checks the subscriptions declared on
this process's broker.

With ``--processes N`` the processes of one ``dramatiq`` command share the port: the first
to boot binds it, the others log that a sibling serves it (they run the same modules against
the same Redis, so one answer holds for all).  Switched on by
``monitoring.health_check_enabled`` (wired in :mod:`chi_redis.worker`).
"""

from __future__ import annotations

import errno
import logging
from typing import Any

import dramatiq

from .server import HealthServer

__all__ = ["DEFAULT_HEALTH_PORT", "HealthMiddleware"]

logger = logging.getLogger("chi_redis.observe")

#: The worker's health port when ``monitoring.health_port`` is not set.
DEFAULT_HEALTH_PORT = 9181


class HealthMiddleware(dramatiq.Middleware):
    """Serves ``/healthz`` and ``/readyz`` of this worker process on ``host:port``."""

    def __init__(
        self, port: int = DEFAULT_HEALTH_PORT,
        host: str = "0.0.0.0",  # probes (kubelet, compose) reach the pod IP  # nosec B104
    ) -> None:
        self.port = port
        self.host = host
        self.server: HealthServer | None = None

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        try:
            self.server = HealthServer(
                broker.bus, host=self.host, port=self.port,
                subscriptions=lambda: sorted(broker.subscriptions),
            ).start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            logger.info("health port %s is served by a sibling worker process", self.port)
            return
        logger.info("health endpoints on http://%s:%s/readyz", self.host, self.server.port)

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
