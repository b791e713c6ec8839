"""Property tests: encode/decode round trip, name validation, time-range query vs brute force."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fakeredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chi_redis import Codec, Event, EventBus, InvalidNameError, MemoryEventStore
from chi_redis.events.codec import entry_fields
from chi_redis.events.event import _to_us
from chi_redis.events.names import NAME_PATTERN, glob_matches, validate_glob, validate_name

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(NAME_PATTERN, fullmatch=True)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)


def json_values(extra: st.SearchStrategy[Any] = st.nothing()) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.one_of(scalars, extra),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )


meta_values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)).map(
        lambda d: timedelta(minutes=int(d.total_seconds() // 60))
    ),
)
timestamps = st.datetimes(
    min_value=datetime(1950, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets
)


def events(data: st.SearchStrategy[Any]) -> st.SearchStrategy[Event]:
    return st.builds(
        Event,
        type=names,
        topic=st.one_of(st.just(""), names),
        data=data,
        metadata=st.dictionaries(st.text(max_size=10), meta_values, max_size=5),
        timestamp=timestamps,
        version=st.text(min_size=1, max_size=8),
    )


def roundtrip(codec: Codec, event: Event) -> Event:
    fields = entry_fields(codec.encode(event))
    return codec.decode(fields, topic=event.topic, stream="s", entry_id="1-0")


@SETTINGS
@given(events(json_values(st.binary(max_size=16))))
def test_msgpack_round_trip(event: Event) -> None:
    assert roundtrip(Codec("msgpack"), event) == event


@SETTINGS
@given(events(json_values()))
def test_json_round_trip(event: Event) -> None:
    assert roundtrip(Codec("json"), event) == event


@settings(max_examples=200, deadline=None)
@given(names)
def test_names_matching_the_pattern_are_accepted(name: str) -> None:
    assert validate_name(name) == name


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=140).filter(lambda s: re.fullmatch(NAME_PATTERN, s) is None))
def test_names_outside_the_pattern_are_rejected(name: str) -> None:
    try:
        validate_name(name)
    except InvalidNameError:
        return
    raise AssertionError(f"{name!r} was accepted")


# -- time-range queries vs brute force -------------------------------------------------------

T0 = datetime(2024, 1, 1, tzinfo=UTC)
TYPES = ["user.signed_up", "user.renamed", "order.placed", "order.paid", "audit"]
GLOBS = [["user.*"], ["*.placed"], ["audit"], ["order.paid", "user.*"], ["*"]]
moments = st.integers(min_value=0, max_value=60).map(lambda s: T0 + timedelta(seconds=s))

stored_events = st.lists(
    st.builds(
        lambda t, ts, topic: Event(
            id=str(uuid.uuid4()), type=t, timestamp=ts, topic=topic, data={"t": t}
        ),
        st.sampled_from(TYPES),
        moments,
        st.sampled_from(["", "", "misc"]),
    ),
    max_size=40,
)
queries = st.fixed_dictionaries(
    {"start": moments, "end": moments},
    optional={
        "topic": st.sampled_from(["user", "order", "audit", "misc", "none"]),
        "types": st.sampled_from(GLOBS),
        "limit": st.integers(min_value=0, max_value=45),
    },
)


def brute_force(events: list[Event], q: dict[str, Any]) -> list[Event]:
    found = [
        e
        for e in events
        if q["start"] <= e.timestamp <= q["end"]
        and ("topic" not in q or e.topic == q["topic"])
        and ("types" not in q or any(glob_matches(g, e.type) for g in q["types"]))
    ]
    found.sort(key=lambda e: (_to_us(e.timestamp), e.id))
    return found[: q["limit"]] if "limit" in q else found


@SETTINGS
@given(stored_events, st.lists(queries, min_size=1, max_size=5))
def test_memory_time_range_matches_brute_force(
    events: list[Event], qs: list[dict[str, Any]]
) -> None:
    store = MemoryEventStore()
    for e in events:
        store.store(e)
    for q in qs:
        assert store.load_by_time_range(**q) == brute_force(events, q)


@SETTINGS
@given(stored_events, st.lists(queries, min_size=1, max_size=5))
def test_redis_time_range_matches_brute_force(
    events: list[Event], qs: list[dict[str, Any]]
) -> None:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)), version=(7, 0))
    bus = EventBus(client, namespace="prop")
    bus.publish_batch(events, chunk_size=7)
    for q in qs:
        assert bus.store.load_by_time_range(**q) == brute_force(events, q)
    client.close()


# Globs against a reference matcher: segment lists, ``*`` one segment, ``**`` zero or more.
def reference_match(pattern: list[str], segments: list[str]) -> bool:
    if not pattern:
        return not segments
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(reference_match(rest, segments[i:]) for i in range(len(segments) + 1))
    if not segments:
        return False
    return (head == "*" or head == segments[0]) and reference_match(rest, segments[1:])


segment_words = st.sampled_from(["a", "b", "user", "x-1"])
glob_patterns = st.lists(
    st.one_of(segment_words, st.just("*"), st.just("**")), min_size=1, max_size=5
).map(".".join)
dotted_types = st.lists(segment_words, min_size=1, max_size=6).map(".".join)


@SETTINGS
@given(glob_patterns, dotted_types)
def test_globs_match_like_the_reference_matcher(pattern: str, event_type: str) -> None:
    assert validate_glob(pattern) == pattern
    expected = reference_match(pattern.split("."), event_type.split("."))
    assert glob_matches(pattern, event_type) is expected


@SETTINGS
@given(dotted_types)
def test_star_never_crosses_a_dot_and_double_star_crosses_any(event_type: str) -> None:
    depth = event_type.count(".") + 1
    assert glob_matches("*", event_type) is (depth == 1)
    assert glob_matches("**", event_type)
    head = event_type.split(".", 1)[0]
    assert glob_matches(f"{head}.**", event_type)
    assert glob_matches(f"{head}.*", event_type) is (depth == 2)
