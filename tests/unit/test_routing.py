"""Routing rules from the config become subscriptions (chi_redis.routing), in-process."""

from __future__ import annotations

import sys
from pathlib import Path

import fakeredis
import pytest

from chi_redis import EventBus
from chi_redis.config import load_config
from chi_redis.errors import ConfigError
from chi_redis.events.filters import EntryView
from chi_redis.routing import apply_routing, resolve_handler
from chi_redis.runtime.subscriptions import (
    DEFAULT_BATCH_WAIT_MS,
    MAX_BATCH_SIZE,
    MAX_BATCH_WAIT_MS,
)

HERE = Path(__file__).resolve().parent


@pytest.fixture
def bus() -> EventBus:
    return EventBus(fakeredis.FakeRedis(version=(7, 0)), namespace="routing")


def config(tmp_path: Path, rules: str, extra: str = "") -> object:
    path = tmp_path / "c.yaml"
    path.write_text(f"events:\n{extra}  routing:\n    rules:\n{rules}")
    return load_config(path)


SEED_RULES = """\
      - priority: 100
        filter: {type: topic, values: [security]}
        handler: security_handler
      - priority: 50
        filter: {type: pattern, values: ["user.*", "order.*"]}
        handler: business_handler
      - priority: 1
        filter: {type: all}
        handler: log_handler
"""


def _register(bus: EventBus, *names: str) -> None:
    for name in names:
        bus.handler(name)(lambda event: None)


def test_the_seeds_rules_become_three_subscriptions(bus: EventBus, tmp_path: Path) -> None:
    _register(bus, "security_handler", "business_handler", "log_handler")
    made = apply_routing(bus, config(tmp_path, SEED_RULES))  # type: ignore[arg-type]
    assert made == ["security_handler", "business_handler", "log_handler"]
    sec, biz, log = (bus.subscriptions[n] for n in made)
    assert (sec.priority, biz.priority, log.priority) == (100, 50, 1)
    assert sec.bound_topics() == ["security"]
    assert biz.bound_topics() == ["order", "user"]
    assert log.wildcard and log.bound_topics(["a", "b"]) == ["a", "b"]
    cases = {("security.login_failed", "security"): {"security_handler", "log_handler"},
             ("user.created", "user"): {"business_handler", "log_handler"},
             ("order.placed", "order"): {"business_handler", "log_handler"},
             ("user.profile.updated", "user"): {"log_handler"}}
    for (type_, topic), expected in cases.items():
        entry = EntryView(type_, topic)
        took = {s.name for s in (sec, biz, log) if topic in s.bound_topics([topic])
                and s.accepts(entry)}
        assert took == expected, (type_, took)


def test_rule_options_name_retry_and_metadata_filters(bus: EventBus, tmp_path: Path) -> None:
    rules = """\
      - handler: routed_handlers:audit
        filter: {type: metadata, key: region, values: [eu, us]}
        max_retries: 1
        max_deliveries: 2
        start: earliest
      - handler: h
        name: exact-types
        filter: {type: type, values: [user.created]}
        min_backoff_ms: 10
"""
    sys.path.insert(0, str(HERE))
    try:
        bus.handler("h")(lambda e: None)
        cfg = config(tmp_path, rules, extra="  worker:\n    retry:\n      max_backoff_ms: 99\n")
        assert apply_routing(bus, cfg) == ["audit", "exact-types"]  # type: ignore[arg-type]
    finally:
        sys.path.remove(str(HERE))
    audit, exact = bus.subscriptions["audit"], bus.subscriptions["exact-types"]
    assert audit.start == "earliest" and audit.wildcard
    assert (audit.options.max_retries, audit.options.max_deliveries) == (1, 2)
    assert audit.accepts(EntryView("a.b", "a", b'{"region":"eu"}'))
    assert not audit.accepts(EntryView("a.b", "a", b'{"region":"asia"}'))
    assert not audit.accepts(EntryView("a.b", "a"))
    assert (exact.options.min_backoff_ms, exact.options.max_backoff_ms) == (10, 99)
    assert exact.options.max_retries == 5  # the worker.retry default
    assert exact.accepts(EntryView("user.created", "user"))
    assert not exact.accepts(EntryView("user.created2", "user"))


def test_a_rule_with_batch_size_makes_a_batch_subscription(
    bus: EventBus, tmp_path: Path
) -> None:
    rules = """\
      - handler: h
        name: batched
        filter: {type: topic, values: [order]}
        batch_size: 50
        batch_wait_ms: 20
      - handler: h
        name: waits-default
        filter: {type: topic, values: [order]}
        batch_size: 10000
"""
    bus.handler("h")(lambda events: None)
    assert apply_routing(bus, config(tmp_path, rules)) == [  # type: ignore[arg-type]
        "batched", "waits-default"]
    batched, default = bus.subscriptions["batched"], bus.subscriptions["waits-default"]
    assert (batched.options.batch_size, batched.options.batch_wait) == (50, 20)
    assert (default.options.batch_size, default.options.batch_wait) == (
        MAX_BATCH_SIZE, DEFAULT_BATCH_WAIT_MS)
    assert MAX_BATCH_WAIT_MS == 60_000  # the config's bound for batch_wait_ms


def test_an_unknown_handler_lists_the_known_ones(bus: EventBus, tmp_path: Path) -> None:
    _register(bus, "alpha", "beta")
    cfg = config(tmp_path, "      - {handler: gamma, filter: {type: all}}\n")
    with pytest.raises(ConfigError) as info:
        apply_routing(bus, cfg)  # type: ignore[arg-type]
    assert "routing.rules[0].handler" in str(info.value)
    assert "unknown handler 'gamma' (known: alpha, beta)" in str(info.value)


def test_import_paths_that_do_not_resolve_are_errors(bus: EventBus) -> None:
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        resolve_handler(bus, "no_such_module_xyz:f")
    sys.path.insert(0, str(HERE))
    try:
        with pytest.raises(ConfigError, match="has no function 'not_callable'"):
            resolve_handler(bus, "routed_handlers:not_callable")
    finally:
        sys.path.remove(str(HERE))


def test_a_rule_may_not_take_a_subscription_a_module_made(
    bus: EventBus, tmp_path: Path
) -> None:
    _register(bus, "log_handler")
    bus.subscribe("log_handler", types=["x"])(lambda e: None)
    cfg = config(tmp_path, "      - {handler: log_handler, filter: {type: all}}\n")
    with pytest.raises(ConfigError, match="already exists"):
        apply_routing(bus, cfg)  # type: ignore[arg-type]


def test_a_handler_name_is_registered_once(bus: EventBus) -> None:
    def f(e: object) -> None: ...

    bus.handler("n")(f)
    bus.handler("n")(f)  # the same function again (a module imported twice) is fine
    with pytest.raises(ValueError, match="already registered"):
        bus.handler("n")(lambda e: None)
