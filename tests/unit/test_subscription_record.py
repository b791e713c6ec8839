"""The registry record: what workers write, what operations read, old records included."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import redis

from chi_redis import Event, EventBus
from chi_redis.ops.registry import registered, registry, subscriptions, topic_names
from chi_redis.ops.replay import choose_target
from chi_redis.ops.stats import collect
from chi_redis.runtime.subscriptions import (
    Subscription,
    SubscriptionRecord,
    bound_topics,
    decode_record,
    encode_record,
)

#: Exactly what the previous version's broker wrote: ``{**sub.describe(), "last_seen_ms"}``.
OLD = {
    "types": ["order.*", "*.created"],
    "topics": [],
    "filter": None,
    "priority": 3,
    "wildcard": True,
    "max_retries": 5,
    "max_deliveries": None,
    "dedupe": False,
    "last_seen_ms": 1_700_000_000_000,
}


def handler(event: Event) -> None:
    pass


def test_a_record_of_the_previous_version_decodes() -> None:
    rec = decode_record("audit", msgspec.json.encode(OLD))
    assert rec == SubscriptionRecord(
        name="audit", types=("order.*", "*.created"), priority=3, wildcard=True,
        max_retries=5, last_seen_ms=1_700_000_000_000,
    )
    assert rec.start is None  # not recorded then
    assert rec.bound_topics(["user", "order"]) == ["order", "user"]


def test_minimal_and_foreign_records_decode() -> None:
    assert decode_record("s", b'{"types": [], "last_seen_ms": 1}').last_seen_ms == 1
    later = decode_record("s", b'{"topics": ["a"], "added_later": {"x": 1}, "name": "s"}')
    assert later.topics == ("a",) and later.last_seen_ms is None
    # One field that does not fit is dropped, the others kept.
    odd = decode_record("s", b'{"types": ["user.*"], "priority": "high", "last_seen_ms": 5}')
    assert (odd.types, odd.priority, odd.last_seen_ms) == (("user.*",), 0, 5)
    for raw in (b"not json", b"[1, 2]", b'"text"', None):
        assert decode_record("s", raw) == SubscriptionRecord(name="s")
    # The hash field names the subscription, whatever the value says.
    assert decode_record("real", b'{"name": "other"}').name == "real"


def test_the_record_keeps_the_previous_field_names_for_older_readers() -> None:
    sub = Subscription(
        name="audit", handler=handler, types=("order.*", "*.created"), priority=3,
        start=datetime(2024, 5, 1, tzinfo=UTC),
    )
    written = msgspec.json.decode(encode_record(sub.record(last_seen_ms=7)))
    assert {k: written[k] for k in OLD} == {**OLD, "last_seen_ms": 7}
    assert written["name"] == "audit" and written["start"] == "2024-05-01T00:00:00+00:00"
    assert decode_record("audit", encode_record(sub.record(7))) == sub.record(7)
    described = sub.describe()
    assert "last_seen_ms" not in described and described["types"] == ["order.*", "*.created"]


@pytest.mark.parametrize(
    ("types", "topics", "expected"),
    [
        ((), ("b", "a"), ["b", "a"]),
        (("user.*", "order.paid"), (), ["order", "user"]),
        (("*.created",), (), ["order", "user", "zeta"]),
        (("user.*", "*.created"), ("b",), ["b"]),
    ],
)
def test_one_binding_rule_for_subscriptions_and_records(
    types: tuple[str, ...], topics: tuple[str, ...], expected: list[str]
) -> None:
    known = ["zeta", "user", "order", "user"]
    sub = Subscription(name="s", handler=handler, types=types, topics=topics)
    assert bound_topics(topics, types, known) == expected
    assert sub.bound_topics(known) == expected
    assert decode_record("s", encode_record(sub.record())).bound_topics(known) == expected


def write_old(client: redis.Redis, bus: EventBus, name: str, info: dict[str, Any]) -> None:
    client.hset(bus.keys.subs(), name, msgspec.json.encode(info))


def test_operations_read_records_of_the_previous_version(
    bus: EventBus, client: redis.Redis
) -> None:
    bus.publish(Event(type="user.created", data={}))
    bus.publish(Event(type="order.created", data={}))
    write_old(client, bus, "audit", OLD)
    write_old(client, bus, "mail", {**OLD, "types": ["user.*"], "wildcard": False})
    client.hset(bus.keys.subs(), "broken", b"{not json")
    client.xgroup_create(bus.keys.stream("user"), "mail", id="0")

    reg = registry(bus)
    assert sorted(reg) == ["audit", "broken", "mail"]
    assert reg["audit"].last_seen_ms == OLD["last_seen_ms"] and reg["broken"].types == ()
    assert registered(bus, "mail").types == ("user.*",)
    assert topic_names(bus) == ["order", "user"]
    listed = {r.name: r for r in subscriptions(bus)}
    assert listed["mail"].topics == ["user"] and listed["mail"].last_seen_ms == OLD["last_seen_ms"]
    assert listed["broken"].last_seen_ms is None
    stats = {s.name: s for s in collect(bus).subscriptions}
    assert stats["audit"].registered and stats["audit"].last_seen_ms == OLD["last_seen_ms"]
    target, topics = choose_target(bus, to_sub="audit")
    assert topics == ["order", "user"]  # a wildcard: every known topic
    assert target is not None and target.types == ("order.*", "*.created")
    assert choose_target(bus, to_sub="mail")[1] == ["user"]
