"""``chi_redis.worker`` for a bridge bus (``bus.type: rabbitmq``).

Handler modules register with ``from chi_redis.worker import bus``, whatever the bus.
:mod:`chi_redis.worker` builds the Redis bus and its Dramatiq broker; for a bridge,
:mod:`chi_redis.bridges.run` installs this module under that name before it imports the
handler modules, so the same modules register on the bridge bus (docs/buses.md).  Like
``chi_redis.worker``, this entry point reads the environment at import (``CHI_CONFIG``,
``CHI_NAMESPACE``, ``CHI_RABBITMQ_URL`` …).
"""

from __future__ import annotations

import os

from ..config import bridge_from_config, load_config

__all__ = ["broker", "bus", "config"]

config = load_config(env=os.environ)
bus = bridge_from_config(config)
#: No Dramatiq broker: the bridge's own worker runs the subscriptions.
broker = None
