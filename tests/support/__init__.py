"""The test toolkit: one home for what the suites share (tests/ is on ``sys.path``, so
it is imported as ``support``).

- :mod:`support.waiting`: ``wait_until``, ``await_until``, ``stays``;
- :mod:`support.ports`: ``free_port``;
- :mod:`support.skips`: ``skip_or_fail`` (skip locally, fail when ``CI=true``), ``in_ci``;
- :mod:`support.servers`: ``REDIS_URL``, ``connect_real_redis``, ``RedisServer``,
  ``RedisServers`` (own redis-servers: kill -9, restart with or without AOF, requirepass,
  CONFIG SET);
- :mod:`support.keys`: ``keys_of``, ``delete_namespace``, ``CommandCounter``;
- :mod:`support.runtime`: ``Runtime`` / ``in_process_runtime`` (StreamsBroker + Dramatiq
  Worker on a bus), ``patch_dramatiq``, ``FAST``, ``Recorder``, ``group_info``, ``drained``,
  ``dlq_len``, ``wait_groups``;
- :mod:`support.processes`: ``WorkerProcess``, ``Workers``, ``worker_env``, ``clean_env``,
  ``wait_ready``, ``ROOT``, ``TESTS``;
- :mod:`support.markers`: the checks that keep the ``redis`` marker true;
- :mod:`support.backends`: the backends of the runtime conformance suite (``Features``,
  ``Session``, ``Backend``), with :mod:`support.redis_sessions`,
  :mod:`support.rabbitmq_session`, :mod:`support.kafka_session`; its harness is
  :mod:`support.conformance`;
- :mod:`support.history`: ``History`` (the reliability checker: lost, unexpected, duplicated,
  recovered), ``record_start`` / ``record_commit`` for handlers in any process;
- :mod:`support.figures`: ``record`` (a case's figures as JSON under ``.artifacts/reliability``);
- :mod:`support.relays`: ``RelayProcess``, ``RelayProcesses`` (``chi-redis outbox relay``
  processes, killed by their own PIDs).
"""

from __future__ import annotations

from .keys import CommandCounter, delete_namespace, keys_of
from .ports import free_port
from .runtime import (
    FAST,
    Recorder,
    Runtime,
    dlq_len,
    drained,
    group_info,
    in_process_runtime,
    patch_dramatiq,
    wait_groups,
)
from .servers import REDIS_URL, RedisServer, RedisServers, connect_real_redis, redis_url
from .skips import in_ci, skip_or_fail
from .waiting import DEFAULT_TIMEOUT_S, await_until, stays, wait_until

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "FAST",
    "REDIS_URL",
    "CommandCounter",
    "Recorder",
    "RedisServer",
    "RedisServers",
    "Runtime",
    "await_until",
    "connect_real_redis",
    "delete_namespace",
    "dlq_len",
    "drained",
    "free_port",
    "group_info",
    "in_ci",
    "in_process_runtime",
    "keys_of",
    "patch_dramatiq",
    "redis_url",
    "skip_or_fail",
    "stays",
    "wait_groups",
    "wait_until",
]
