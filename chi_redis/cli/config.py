"""``chi-redis config check|show``: validate a configuration file, print the effective one."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import click
import msgspec

from ..config import Config, load_config
from ..errors import redact_url
from .options import common_options, emit, settings

__all__ = ["config_group", "notices", "summary"]

_MASK = "***"


@click.group("config")
def config_group() -> None:
    """Configuration files: check one, show the effective configuration."""


@config_group.command("check")
@common_options
@click.argument("file", type=click.Path(dir_okay=False))
def check(file: str) -> None:
    """Validate FILE: exit 0 with a one-line summary, or 1 with the path-qualified error.

    The file is checked as written: the CHI_* environment is not applied.
    """
    remarks: list[str] = []
    config = load_config(file, {}, notice=remarks.append)
    for remark in remarks + notices(config):
        click.echo(f"notice: {remark}", err=True)
    emit({"ok": True, "file": file, "summary": summary(config)}, f"ok: {file}: {summary(config)}")


@config_group.command("show")
@common_options
def show() -> None:
    """Print the effective configuration (file, then CHI_* environment, then flags) as YAML
    (or JSON with --json), passwords masked."""
    s = settings()
    config = s.config
    if s.namespace:
        config = msgspec.structs.replace(config, namespace=s.namespace)
    data = masked(config, url=s.url)
    if s.json:
        emit(data)
        return
    import yaml

    click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())


def summary(config: Config) -> str:
    """One line: what the configuration sets up."""
    bus = config.bus
    where = redact_url(config.redis.effective_url()) if bus.type == "redis" else "in-process"
    if bus.type == "rabbitmq":
        where = f"{redact_url(bus.rabbitmq.url)}, exchange {bus.rabbitmq.exchange}"
    if bus.type == "kafka":
        where = ",".join(bus.kafka.brokers)
    rules = len(config.routing.rules)
    parts = [
        f"bus {bus.type} ({where})",
        f"namespace {config.namespace}",
        f"store {config.store.type if config.store.enabled else 'off'}",
        f"replay {'on' if config.replay.enabled else 'off'}",
        f"metrics {'on' if config.monitoring.metrics_enabled else 'off'}",
        f"{rules} routing rule{'' if rules == 1 else 's'}",
    ]
    return ", ".join(parts)


def notices(config: Config) -> list[str]:
    """Remarks on keys that load but do nothing yet."""
    out = []
    if config.monitoring.tracing_enabled and importlib.util.find_spec("opentelemetry") is None:
        out.append("monitoring.tracing_enabled: OpenTelemetry is not installed, so nothing"
                   " is traced (pip install 'chi-redis[otel]')")
    return out


def masked(config: Config, url: str | None = None) -> dict[str, Any]:
    """``config`` as plain data with every password and URL credential replaced by ***."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    redis = data["bus"]["redis"]
    if url:  # a --redis-url flag wins over the file and the environment
        redis.update(url=url, address=None)
    if redis.get("url"):
        redis["url"] = redact_url(redis["url"])
    if redis.get("password") or os.environ.get("CHI_REDIS_PASSWORD"):
        redis["password"] = _MASK
    data["bus"]["rabbitmq"]["url"] = redact_url(data["bus"]["rabbitmq"]["url"])
    from ..store.postgres import redact_dsn

    data["store"]["database"]["dsn"] = redact_dsn(data["store"]["database"]["dsn"])
    return {"events": data}
