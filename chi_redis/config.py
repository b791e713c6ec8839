"""Configuration: msgspec Structs decoded from YAML, then the environment on top.

Precedence: CLI flag > environment (``CHI_*``) > YAML file > default.  Unknown keys are an
error (``Object contains unknown field `urll` - at `$.redis```), so typos never pass.
Nothing here reads the environment at import time: callers pass ``env``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from .backend import DEFAULT_URL
from .errors import ConfigError

__all__ = ["Config", "RetentionPolicy", "load_config"]


class RedisConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str = DEFAULT_URL
    socket_timeout_s: float = 10.0
    socket_connect_timeout_s: float = 5.0


class BusConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    encoding: Literal["msgpack", "json"] = "msgpack"
    max_event_bytes: int = 1 << 20
    idempotency_ttl_ms: int = 24 * 3600 * 1000


class WorkerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    lease_ms: int = 60_000
    reclaim_interval_ms: int = 5_000
    max_deliveries: int = 5
    block_ms: int = 1_000
    prefetch: int | None = None
    max_prefetch: int = 128
    metrics_port: int | None = None


class RetentionPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_age: str | None = None  # a duration: 30s, 15m, 7d
    max_len: int | None = None


class RetentionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    interval_s: float = 60.0
    default: RetentionPolicy = msgspec.field(default_factory=RetentionPolicy)
    topics: dict[str, RetentionPolicy] = msgspec.field(default_factory=dict)


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole configuration of a chi-redis deployment."""

    namespace: str = "chi"
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    bus: BusConfig = msgspec.field(default_factory=BusConfig)
    worker: WorkerConfig = msgspec.field(default_factory=WorkerConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    subscriptions_seen_days: float = 7.0


_ENV_INT = {
    "CHI_LEASE_MS": ("worker", "lease_ms"),
    "CHI_RECLAIM_INTERVAL_MS": ("worker", "reclaim_interval_ms"),
    "CHI_MAX_DELIVERIES": ("worker", "max_deliveries"),
    "CHI_BLOCK_MS": ("worker", "block_ms"),
    "CHI_PREFETCH": ("worker", "prefetch"),
    "CHI_MAX_PREFETCH": ("worker", "max_prefetch"),
    "CHI_METRICS_PORT": ("worker", "metrics_port"),
    "CHI_MAX_EVENT_BYTES": ("bus", "max_event_bytes"),
}


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (YAML; ``env['CHI_CONFIG']`` when None), then apply ``CHI_*`` variables."""
    env = env or {}
    path = path or env.get("CHI_CONFIG") or None
    raw: dict[str, Any] = {}
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
        import yaml  # on first use: most processes never read a config file

        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping")
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config{f' in {str(path)!r}' if path else ''}: {exc}") from None
    if env.get("CHI_REDIS_URL"):
        config.redis.url = env["CHI_REDIS_URL"]
    if env.get("CHI_NAMESPACE"):
        config.namespace = env["CHI_NAMESPACE"]
    for var, (section, name) in _ENV_INT.items():
        if env.get(var):
            try:
                value = int(env[var])
            except ValueError:
                raise ConfigError(f"{var} must be an integer, got {env[var]!r}") from None
            setattr(getattr(config, section), name, value)
    return config


def parse_duration_ms(text: str) -> int:
    """``30s``, ``15m``, ``2h``, ``7d``, ``500ms`` → milliseconds."""
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
    t = text.strip().lower()
    for unit in ("ms", "s", "m", "h", "d", "w"):
        if t.endswith(unit) and t[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * units[unit])
    raise ConfigError(f"invalid duration {text!r}: use e.g. 30s, 15m, 2h, 7d")
