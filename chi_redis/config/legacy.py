"""Files in the layout before ``events:`` (``namespace:``, ``redis:``, ``worker:`` … at the
root) still load: decoded with their own schema (so errors name their own paths), then
moved to where the ``events:`` layout keeps each key."""

from __future__ import annotations

from typing import Any

import msgspec

from ..backend import DEFAULT_URL
from .schema import RetentionConfig

__all__ = ["LEGACY_KEYS", "NOTICE", "from_legacy", "is_legacy"]

NOTICE = ("{path} uses the layout without `events:` (namespace/redis/bus/worker/retention at"
          " the top): it still loads, but move its keys under `events:` (docs/configuration.md)")


class _Redis(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str = DEFAULT_URL
    socket_timeout_s: float = 10.0
    socket_connect_timeout_s: float = 5.0


class _Bus(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    encoding: str = "msgpack"
    max_event_bytes: int = 1 << 20
    idempotency_ttl_ms: int = 24 * 3600 * 1000


class _Worker(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    lease_ms: int = 60_000
    reclaim_interval_ms: int = 5_000
    max_deliveries: int = 5
    block_ms: int = 1_000
    prefetch: int | None = None
    max_prefetch: int = 512
    metrics_port: int | None = None


class _Legacy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    namespace: str = "chi"
    redis: _Redis | None = None
    bus: _Bus | None = None
    worker: _Worker | None = None
    retention: RetentionConfig | None = None
    subscriptions_seen_days: float = 7.0


LEGACY_KEYS = frozenset(_Legacy.__struct_fields__)


def is_legacy(raw: dict[str, Any]) -> bool:
    """Whether a file's root is in the earlier layout (no ``events:``, only its keys)."""
    return bool(raw) and "events" not in raw and set(raw) <= LEGACY_KEYS


def from_legacy(raw: dict[str, Any]) -> dict[str, Any]:
    """The ``events:`` section equivalent to an earlier-layout file (ValidationError with
    the file's own paths when it does not fit its schema)."""
    old = msgspec.to_builtins(msgspec.convert(raw, _Legacy))
    events: dict[str, Any] = {}
    if "namespace" in old:
        events["namespace"] = old["namespace"]
    if "subscriptions_seen_days" in old:
        events["subscriptions_seen_days"] = old["subscriptions_seen_days"]
    bus: dict[str, Any] = dict(old.get("bus") or {})
    if "redis" in old:
        bus["redis"] = old["redis"]
    if bus:
        events["bus"] = bus
    worker = dict(old.get("worker") or {})
    if "metrics_port" in worker:
        events["monitoring"] = {"metrics_port": worker.pop("metrics_port")}
    if worker:
        events["worker"] = worker
    if "retention" in old:
        events["retention"] = old["retention"]
    return events
