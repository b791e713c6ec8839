"""Worker-process module for the archiver kill -9 test: no handlers of its own.

The archiver subscription comes from the config (``store.archive.enabled: true``), which
``chi_redis.worker`` reads at import (``CHI_CONFIG``).
"""

from __future__ import annotations

from chi_redis.worker import bus

__all__ = ["bus"]
