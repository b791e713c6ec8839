"""Routing rules from the config become subscriptions (``events.routing.rules``).

Each rule is a subscription named after its handler (or its ``name``) with its filter,
priority and retry settings::

    - priority: 100
      filter: {type: topic, values: [security]}
      handler: security_handler          # @bus.handler("security_handler")
    - priority: 1
      filter: {type: all}
      handler: myapp.audit:log_everything  # an import path

Filters: ``topic`` binds those topics; ``type`` exact types; ``pattern`` type globs (``*`` one
segment, ``**`` any number); ``metadata`` entries whose metadata ``key`` has one of
``values``, on every topic; ``all`` every event of every topic (the glob ``**``).

When: ``dramatiq chi_redis.worker handlers`` imports ``chi_redis.worker`` first and the
handler modules after it, so the names those modules register do not exist yet when the
config is read.  :class:`RoutingMiddleware` applies the rules in Dramatiq's
``before_worker_boot`` hook, which runs once every module was imported and before the
Worker starts consuming: names and import paths are both resolved there.  A rule that
cannot be resolved stops the worker process with one line naming the rule.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

import dramatiq

from .config import Config, RuleConfig, rule_subscription_name
from .errors import ChiError, ConfigError
from .events.filters import Filter, any_of, metadata

if TYPE_CHECKING:
    from .publish.bus import EventBus
    from .runtime.subscriptions import Handler

__all__ = ["RoutingMiddleware", "apply_routing", "resolve_handler"]

logger = logging.getLogger(__name__)

#: Exit code of a worker process whose routing rules cannot be applied (Dramatiq's own
#: code for "a module could not be imported", which its master reports the same way).
EXIT_ROUTING = 2


def resolve_handler(bus: EventBus, ref: str, where: str = "handler") -> Handler:
    """The callable ``ref`` names: a name registered with ``@bus.handler`` or an import path
    ``package.module:function``; ConfigError listing the known names otherwise."""
    if ref in bus.handlers:
        return bus.handlers[ref]
    if ":" in ref:
        module_name, _, attribute = ref.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"{where}: cannot import {module_name!r} for {ref!r}: {exc}"
                              ) from None
        fn = getattr(module, attribute, None)
        if not callable(fn):
            raise ConfigError(f"{where}: {module_name!r} has no function {attribute!r}")
        return fn  # type: ignore[no-any-return]
    known = ", ".join(sorted(bus.handlers)) or "none registered"
    raise ConfigError(f"{where}: unknown handler {ref!r} (known: {known}); register it with"
                      " @bus.handler(name) in a handler module, or give package.module:function")


def _binding(rule: RuleConfig) -> dict[str, Any]:
    f = rule.filter
    values = [str(v) for v in f.values]
    if f.type == "topic":
        return {"topics": values}
    if f.type in ("type", "pattern"):
        return {"types": values}
    if f.type == "metadata":
        assert f.key is not None  # the config checks said so
        key = f.key
        tests: list[Filter] = [metadata(**{key: v}) for v in f.values]
        return {"types": ["**"], "filter": tests[0] if len(tests) == 1 else any_of(*tests)}
    return {"types": ["**"]}  # all


def apply_routing(bus: EventBus, config: Config) -> list[str]:
    """Subscribe every routing rule of ``config`` on ``bus``; returns the subscription names.

    Call it after the handler modules registered their names (workers do, on boot).
    """
    made = []
    retry = config.worker.retry
    for i, rule in enumerate(config.routing.rules):
        where = f"routing.rules[{i}].handler"
        fn = resolve_handler(bus, rule.handler, where)
        name = rule_subscription_name(rule)
        if name in bus.subscriptions:
            raise ConfigError(f"routing.rules[{i}]: subscription {name!r} already exists"
                              " (a module subscribed it): give the rule another `name`")
        bus.subscribe(
            name, priority=rule.priority, start=rule.start,
            max_retries=_pick(rule.max_retries, retry.max_retries),
            min_backoff_ms=_pick(rule.min_backoff_ms, retry.min_backoff_ms),
            max_backoff_ms=_pick(rule.max_backoff_ms, retry.max_backoff_ms),
            max_deliveries=rule.max_deliveries, batch_size=rule.batch_size,
            batch_wait_ms=rule.batch_wait_ms, **_binding(rule),
        )(fn)
        made.append(name)
    return made


def _pick(value: int | None, default: int) -> int:
    return default if value is None else value


class RoutingMiddleware(dramatiq.Middleware):
    """Applies the routing rules once per worker process, after the modules were imported."""

    def __init__(self, bus: EventBus, config: Config) -> None:
        self.bus = bus
        self.config = config
        self.applied: list[str] | None = None

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        if self.applied is not None:
            return
        try:
            self.applied = apply_routing(self.bus, self.config)
        except ChiError as exc:
            logger.error("routing rules not applied: %s", exc)
            raise SystemExit(EXIT_ROUTING) from None
        logger.info("routing rules subscribed: %s", ", ".join(self.applied))
