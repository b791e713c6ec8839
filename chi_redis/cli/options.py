"""What every ``chi-redis`` command shares: connection options, errors, output.

``--redis-url``, ``--namespace``, ``--json`` and ``--config`` are accepted on the group
and on every command (DESIGN §8); a value given on the command wins over the group's.
The Redis URL comes from ``--redis-url``, then ``CHI_REDIS_URL``, then the config file
(``--config`` / ``CHI_CONFIG``), then ``redis://127.0.0.1:6379/0``.

Errors a user can fix (:class:`~chi_redis.ChiError`, redis-py errors) become one line on
stderr and exit code 1, with every password scrubbed; click's usage errors exit 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
import msgspec
import redis.exceptions as rex

from ..backend.connection import connect, map_redis_error
from ..config import Config, load_config
from ..errors import ChiError, scrub
from ..publish.bus import EventBus

__all__ = ["ChiGroup", "Settings", "common_options", "emit", "emit_lines", "settings"]

F = TypeVar("F", bound=Callable[..., Any])
_JSON = msgspec.json.Encoder()


@dataclass
class Settings:
    """The connection options after every source was consulted."""

    url: str | None = None
    namespace: str | None = None
    json: bool = False
    config_path: str | None = None
    _config: Config | None = None
    _bus: EventBus | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, os.environ)
        return self._config

    @property
    def redis_url(self) -> str:
        return self.url or self.config.redis.url

    @property
    def ns(self) -> str:
        return self.namespace or self.config.namespace

    @property
    def secrets(self) -> list[str]:
        """Every password any configured URL carries (scrubbed from all output)."""
        urls = [self.url, os.environ.get("CHI_REDIS_URL")]
        if self._config is not None:
            urls.append(self._config.redis.url)
        out = []
        for u in urls:
            try:
                p = urlsplit(u).password if u else None
            except ValueError:
                p = None
            if p:
                out.append(p)
        return out

    def bus(self) -> EventBus:
        """The bus for this invocation (created once)."""
        if self._bus is None:
            cfg = self.config
            client = connect(
                self.redis_url,
                socket_timeout=cfg.redis.socket_timeout_s,
                socket_connect_timeout=cfg.redis.socket_connect_timeout_s,
            )
            self._bus = EventBus(
                client, namespace=self.ns, encoding=cfg.bus.encoding,
                max_event_bytes=cfg.bus.max_event_bytes,
                idempotency_ttl_ms=cfg.bus.idempotency_ttl_ms,
            )
        return self._bus


def settings(ctx: click.Context | None = None) -> Settings:
    """The settings of the current invocation."""
    ctx = ctx or click.get_current_context()
    obj = ctx.find_root().ensure_object(Settings)
    assert isinstance(obj, Settings)
    return obj


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    s = settings(ctx)
    if value is None or value is False:
        return value
    if param.name == "redis_url":
        s.url = value
    elif param.name == "namespace":
        s.namespace = value
    elif param.name == "json_output":
        s.json = True
    elif param.name == "config_path":
        s.config_path = value
    return value


def common_options(fn: F) -> F:
    """Add the shared connection and output options to a command or group."""
    options = [
        click.option("--redis-url", "redis_url", metavar="URL", expose_value=False,
                     callback=_store, is_eager=True,
                     help="Redis URL (else $CHI_REDIS_URL, the config file, redis://127.0.0.1:6379/0)."),
        click.option("--namespace", "namespace", metavar="NS", expose_value=False,
                     callback=_store, is_eager=True, help="Key namespace (default chi)."),
        click.option("--json", "json_output", is_flag=True, expose_value=False,
                     callback=_store, is_eager=True, help="Machine-readable output."),
        click.option("--config", "config_path", metavar="FILE", expose_value=False,
                     callback=_store, is_eager=True, help="YAML config file (else $CHI_CONFIG)."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _one_line(text: str, secrets: list[str]) -> str:
    return " ".join(scrub(text, *secrets).split())


class ChiGroup(click.Group):
    """A click group that turns user-fixable errors into one clean line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.parent is not None:
            return super().invoke(ctx)
        try:
            return super().invoke(ctx)
        except ChiError as exc:
            raise click.ClickException(_one_line(str(exc), settings(ctx).secrets)) from None
        except rex.RedisError as exc:
            s = settings(ctx)
            err = map_redis_error(exc, s.url or "")
            raise click.ClickException(_one_line(str(err), s.secrets)) from None


def emit(obj: Any, text: Iterable[str] | str | None = None) -> None:
    """Print one result: ``obj`` as one JSON object with --json, else ``text``."""
    if settings().json or text is None:
        click.echo(_JSON.encode(obj).decode())
        return
    for line in [text] if isinstance(text, str) else text:
        click.echo(line)


def emit_lines(objs: Iterable[Any], render: Callable[[Any], str] | None = None) -> int:
    """Print a list: one JSON object per line with --json (or without ``render``)."""
    n = 0
    as_json = settings().json or render is None
    for o in objs:
        click.echo(_JSON.encode(o).decode() if as_json else render(o))  # type: ignore[misc]
        n += 1
    return n


def json_line(obj: Any) -> bytes:
    """``obj`` as compact JSON bytes."""
    return _JSON.encode(obj)


def stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
