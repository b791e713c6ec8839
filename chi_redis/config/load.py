"""Reading a configuration: the YAML file, then the ``CHI_*`` environment on top.

Precedence: CLI flag > environment (``CHI_*``) > YAML file > default.  The environment is
applied to the file's mapping before it is decoded, so a value from either source passes
the same checks.  Nothing here reads the environment at import time: callers pass ``env``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ..errors import ConfigError
from .checks import check
from .legacy import NOTICE, from_legacy, is_legacy
from .schema import Config, ConfigFile

__all__ = ["ENV_VARS", "load_config", "read_file"]

logger = logging.getLogger("chi_redis.config")
T = TypeVar("T")

#: Environment variable → (path under ``events:``, kind).  Documented in
#: docs/configuration.md; ``CHI_CONFIG`` names the file itself.
ENV_VARS: dict[str, tuple[tuple[str, ...], type]] = {
    "CHI_NAMESPACE": (("namespace",), str),
    "CHI_BUS_TYPE": (("bus", "type"), str),
    "CHI_REDIS_URL": (("bus", "redis", "url"), str),
    "CHI_REDIS_PASSWORD": (("bus", "redis", "password"), str),
    "CHI_REDIS_PASSWORD_FILE": (("bus", "redis", "password_file"), str),
    "CHI_REDIS_TLS_CA_FILE": (("bus", "redis", "tls_ca_file"), str),
    "CHI_RABBITMQ_URL": (("bus", "rabbitmq", "url"), str),
    "CHI_RABBITMQ_EXCHANGE": (("bus", "rabbitmq", "exchange"), str),
    "CHI_KAFKA_BROKERS": (("bus", "kafka", "brokers"), list),
    "CHI_BUFFER_SIZE": (("bus", "buffer_size"), int),
    "CHI_WORKER_COUNT": (("bus", "worker_count"), int),
    "CHI_MAX_EVENT_BYTES": (("bus", "max_event_bytes"), int),
    "CHI_LEASE_MS": (("worker", "lease_ms"), int),
    "CHI_RECLAIM_INTERVAL_MS": (("worker", "reclaim_interval_ms"), int),
    "CHI_MAX_DELIVERIES": (("worker", "max_deliveries"), int),
    "CHI_BLOCK_MS": (("worker", "block_ms"), int),
    "CHI_PREFETCH": (("worker", "prefetch"), int),
    "CHI_MAX_PREFETCH": (("worker", "max_prefetch"), int),
    "CHI_INLINE_WHEN_IDLE": (("worker", "inline_when_idle"), bool),
    "CHI_METRICS_PORT": (("monitoring", "metrics_port"), int),
    "CHI_HEALTH_PORT": (("monitoring", "health_port"), int),
    "CHI_DATABASE_URL": (("store", "database", "dsn"), str),
}


def read_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML file holds (ConfigError when unreadable, not YAML, not a mapping)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    import yaml  # on first use: most processes never read a config file

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file {str(path)!r} is not valid YAML: {' '.join(str(exc).split())}"
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping (events: ...), got"
                          f" {type(raw).__name__} - at `$`")
    return raw


def _events_section(raw: dict[str, Any], where: str, notice: Callable[[str], None]) -> Any:
    """The ``events:`` mapping of a file's root, from either layout."""
    if "events" in raw:
        if len(raw) > 1:  # a key beside events: is unknown
            _convert(raw, ConfigFile, where)
        return raw["events"] if raw["events"] is not None else {}
    if not raw:
        return {}
    if is_legacy(raw):
        try:
            events = from_legacy(raw)
        except msgspec.ValidationError as exc:
            _unwrapped(raw, where)
            raise ConfigError(f"invalid config{where}: {_with_path(exc)}") from None
        notice(NOTICE.format(path=where.removeprefix(" in ").strip() or "the config"))
        return events
    _unwrapped(raw, where)
    return _convert(raw, ConfigFile, where)


def _unwrapped(raw: dict[str, Any], where: str) -> None:
    """Refuse the settings of the ``events:`` section given without the section."""
    try:
        msgspec.convert(raw, Config)
    except msgspec.ValidationError:
        return
    raise ConfigError(f"invalid config{where}: the settings must sit under a top-level"
                      " `events:` key - at `$`")


def _with_path(exc: msgspec.ValidationError) -> str:
    # msgspec names no path for an error at the root itself.
    return str(exc) if " - at `" in str(exc) else f"{exc} - at `$`"


def _convert(raw: Any, cls: type[T], where: str) -> T:
    try:
        return msgspec.convert(raw, cls)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config{where}: {_with_path(exc)}") from None


def _apply_env(events: dict[str, Any], env: Mapping[str, str]) -> None:
    for var, (path, kind) in ENV_VARS.items():
        text = env.get(var)
        if not text:
            continue
        value: Any = text
        if kind is int:
            try:
                value = int(text)
            except ValueError:
                raise ConfigError(f"{var} must be an integer, got {text!r}") from None
        if kind is bool:
            flag = text.strip().lower()
            if flag not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ConfigError(f"{var} must be true or false, got {text!r}")
            value = flag in ("true", "1", "yes", "on")
        if kind is list:  # comma-separated
            value = [v.strip() for v in text.split(",") if v.strip()]
        section = events
        for key in path[:-1]:
            inner = section.get(key)
            section[key] = inner = dict(inner) if isinstance(inner, dict) else {}
            section = inner
        section[path[-1]] = value
        if var == "CHI_REDIS_URL":  # the URL replaces the file's address, db, username, tls
            for key in ("address", "db", "username", "tls"):
                section.pop(key, None)


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    notice: Callable[[str], None] | None = None,
) -> Config:
    """Read ``path`` (YAML; ``env['CHI_CONFIG']`` when None), then apply ``CHI_*`` variables.

    Returns the ``events:`` section.  ``notice`` receives one-line remarks (a file in the
    earlier layout); by default they are logged as warnings.
    """
    env = env or {}
    path = path or env.get("CHI_CONFIG") or None
    where = f" in {str(path)!r}" if path else ""
    raw = read_file(path) if path else {}
    events = _events_section(raw, where, notice or logger.warning)
    if isinstance(events, dict):  # (anything else fails in convert below, with its path)
        events = dict(events)
        _apply_env(events, env)
    # Nothing set (no file, no CHI_* variable): the defaults, without msgspec building its
    # decoder for the whole schema first (~4 ms of every CLI run without a config).
    config = Config() if events == {} else _convert({"events": events}, ConfigFile, where).events
    try:
        check(config)
    except ConfigError as exc:
        raise ConfigError(f"invalid config{where}: {exc}") from None
    return config
