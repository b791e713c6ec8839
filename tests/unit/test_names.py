"""Names: one pattern for types, topics, subscriptions and namespaces (docs/design.md §4.2)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis
from support import CommandCounter, keys_of
from support.hostile import INVALID_NAMES, VALID_NAMES

from chi_redis import Event, EventBus, InvalidNameError, Keys, MemoryEventStore, ValidationError
from chi_redis.events.names import compile_glob, glob_matches, validate_glob, validate_name


@pytest.mark.parametrize("name", INVALID_NAMES, ids=lambda n: repr(n)[:30])
def test_invalid_type_is_rejected_naming_the_field(name: str) -> None:
    expected = ValidationError if name == "" else InvalidNameError  # "": type is required
    with pytest.raises(expected) as info:
        Event(type=name, data={})
    assert info.value.field == "type"
    assert "type" in str(info.value)
    assert len(str(info.value)) < 300  # a 1 MiB name is not echoed back


# An empty topic means "the default topic", so it is not in this list.
@pytest.mark.parametrize("name", [n for n in INVALID_NAMES if n], ids=lambda n: repr(n)[:30])
def test_invalid_topic_is_rejected_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        Event(type="user.signed_up", topic=name, data={})
    assert info.value.field == "topic"


@pytest.mark.parametrize("name", INVALID_NAMES, ids=lambda n: repr(n)[:30])
def test_invalid_namespace_is_rejected(name: str, fake_client: redis.Redis) -> None:
    with pytest.raises(InvalidNameError) as info:
        EventBus(fake_client, namespace=name)
    assert info.value.field == "namespace"


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names_are_accepted(name: str) -> None:
    assert validate_name(name, "topic") == name
    assert Event(type=name, data=None).type == name


def test_non_string_names_are_rejected() -> None:
    for value in (None, 1, b"orders", ["orders"]):
        with pytest.raises(InvalidNameError):
            validate_name(value, "topic")


def test_rejected_name_sends_no_redis_command(fake_client: redis.Redis, ns: str) -> None:
    bus = EventBus(fake_client, namespace=ns)
    with CommandCounter(fake_client) as counter:
        for name in INVALID_NAMES[1:9]:
            with pytest.raises(InvalidNameError):
                bus.publish(Event(type=name, data={}))
            with pytest.raises(InvalidNameError):
                bus.store.load_by_topic(name)
            with pytest.raises(InvalidNameError):
                bus.store.page_by_topic(name)
        with pytest.raises(InvalidNameError):
            now = datetime.now(UTC)
            bus.store.load_by_time_range(now, now, topic="bad topic")
        with pytest.raises(InvalidNameError):
            bus.store.load_by_time_range(now, now, types=["user*"])
    assert counter.count == 0
    assert keys_of(fake_client, ns) == []


def test_every_key_starts_with_the_namespace_and_has_no_glob_characters() -> None:
    keys = Keys("chi")
    built = [
        keys.stream("orders"),
        keys.index("orders"),
        keys.idem("orders", "k1"),
        keys.ids("orders"),
        keys.legacy_ids(),
        keys.topics(),
        keys.subs(),
        keys.queue("mail"),
        keys.delayed("mail"),
        keys.dlq("mail"),
    ]
    for key in built:
        assert key.startswith("chi:")
        assert not any(c in key for c in "*?[] \n")
    assert keys.topic_from_stream(keys.stream("user.profile")) == "user.profile"


def test_globs_match_whole_segments_and_never_cross_dots() -> None:
    assert glob_matches("user.*", "user.created")
    assert not glob_matches("user.*", "user.profile.updated")
    assert glob_matches("*.created", "order.created")
    assert not glob_matches("*.created", "order.created.late")
    assert glob_matches("user.created", "user.created")
    assert not glob_matches("user.created", "user.createdx")
    assert compile_glob("*").fullmatch("user") is not None
    assert compile_glob("*").fullmatch("user.created") is None


def test_double_star_matches_any_number_of_segments_like_rabbitmqs_hash() -> None:
    assert glob_matches("user.**", "user.created")
    assert glob_matches("user.**", "user.profile.updated")
    assert glob_matches("user.**", "user")  # zero segments, as RabbitMQ's `user.#`
    assert not glob_matches("user.**", "users.created")
    assert glob_matches("**", "user")
    assert glob_matches("**", "a.b.c.d")
    assert glob_matches("**.created", "created")
    assert glob_matches("**.created", "shop.order.created")
    assert not glob_matches("**.created", "shop.order.created.late")
    assert glob_matches("a.**.z", "a.z")
    assert glob_matches("a.**.z", "a.b.c.z")
    assert not glob_matches("a.**.z", "a.b.c")
    assert glob_matches("*.**", "a")  # one or more
    assert glob_matches("**.**", "a.b")  # the same as **
    assert validate_glob("user.**") == "user.**"


def test_double_star_binds_like_star() -> None:
    from chi_redis.runtime.subscriptions import bound_topics, is_wildcard

    assert bound_topics((), ("user.**",), known=["order", "user"]) == ["user"]
    assert is_wildcard((), ("**",))
    assert bound_topics((), ("**",), known=["user", "order", "new"]) == ["new", "order", "user"]
    assert is_wildcard((), ("**.created",))
    assert not is_wildcard(("user",), ("**",))


@pytest.mark.parametrize(
    "pattern",
    ["user*", "us*er.x", "", "a" * 129, "user.***", "us**er", "user.**x", "User.*", "a b"],
)
def test_invalid_globs_are_rejected(pattern: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_glob(pattern)


def test_memory_store_rejects_the_same_names() -> None:
    store = MemoryEventStore()
    with pytest.raises(InvalidNameError):
        store.load_by_topic("Orders")
    now = datetime.now(UTC)
    with pytest.raises(InvalidNameError):
        store.load_by_time_range(now, now, types=["*x"])
