"""Observability of one process, from its configuration and environment.

Called once by the worker entry point (``chi_redis.worker``): the metrics switch
(``monitoring.metrics_enabled``), JSON log lines (``CHI_LOG_FORMAT=json``) and tracing
(``monitoring.tracing_enabled`` or ``CHI_TRACING=1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from . import logs, metrics, tracing

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["configure_process"]


def configure_process(config: Config, env: Mapping[str, str]) -> None:
    """Apply the ``monitoring`` section and the ``CHI_LOG_FORMAT``/``CHI_TRACING``
    variables to this process."""
    metrics.set_enabled(config.monitoring.metrics_enabled)
    if logs.use_json_logs(env):
        logs.install_json_logs()
    tracing.configure(config.monitoring.tracing_enabled or tracing.env_enabled(env))
