"""The event envelope: defaults, topic derivation, validation, typed events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from chi_redis import Event, ValidationError, event_type, new_event_id
from chi_redis.events.event import registered_type


# Tags are unique to this module: the type registry is process-wide.
@event_type("evtest.user.created")
class UserCreated(msgspec.Struct):
    user_id: str
    email: str


@event_type("evtest.invoice.paid", topic="invoices")
class InvoicePaid(msgspec.Struct):
    invoice_id: str
    amount_cents: int


def test_event_gets_a_uuid7_id_a_utc_timestamp_and_version() -> None:
    before = datetime.now(UTC)
    event = Event(type="user.created", data={"user_id": "u1"})
    parsed = uuid.UUID(event.id)
    assert parsed.version == 7
    assert event.timestamp.tzinfo is not None
    assert event.timestamp.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= event.timestamp <= datetime.now(UTC)
    assert event.version == "1.0"
    assert event.metadata == {}


def test_event_ids_are_unique_and_time_ordered() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    # UUIDv7 carries the millisecond time in its first 48 bits.
    millis = [uuid.UUID(i).int >> 80 for i in ids]
    assert millis == sorted(millis)


def test_topic_defaults_to_the_first_segment_of_the_type() -> None:
    assert Event(type="account.opened").topic == "account"
    assert Event(type="order.line.added").topic == "order"
    assert Event(type="heartbeat").topic == "heartbeat"


def test_an_explicit_topic_overrides_the_default() -> None:
    assert Event(type="account.opened", topic="accounts").topic == "accounts"


def test_naive_timestamp_is_an_error_not_assumed_utc() -> None:
    with pytest.raises(ValidationError) as info:
        Event(type="user.created", timestamp=datetime(2024, 1, 1, 12, 0))
    assert info.value.field == "timestamp"
    assert "timezone-aware" in str(info.value)


def test_non_datetime_timestamp_is_an_error() -> None:
    with pytest.raises(ValidationError) as info:
        Event(type="user.created", timestamp="2024-01-01T00:00:00Z")  # type: ignore[arg-type]
    assert info.value.field == "timestamp"


def test_timestamp_in_another_zone_is_normalised_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    event = Event(type="user.created", timestamp=datetime(2024, 1, 1, 14, 0, tzinfo=plus2))
    assert event.timestamp == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert event.timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "metadata",
    [
        {"a": [1]},
        {"a": None},
        {"a": {"b": 1}},
        {1: "x"},
        {"a": float("nan")},
        {"a": float("inf")},
        {"a": b"bytes"},
    ],
    ids=repr,
)
def test_metadata_must_map_str_to_scalars(metadata: dict[object, object]) -> None:
    with pytest.raises(ValidationError) as info:
        Event(type="user.created", metadata=metadata)  # type: ignore[arg-type]
    assert info.value.field == "metadata"


def test_metadata_that_is_not_a_dict_is_an_error() -> None:
    with pytest.raises(ValidationError) as info:
        Event(type="user.created", metadata=["a"])  # type: ignore[arg-type]
    assert info.value.field == "metadata"


def test_metadata_scalars_are_accepted() -> None:
    meta = {"s": "x", "i": -3, "f": 1.5, "b": True}
    assert Event(type="user.created", metadata=meta).metadata == meta


def test_type_is_required_for_unregistered_data() -> None:
    with pytest.raises(ValidationError) as info:
        Event(data={"user_id": "u1"})
    assert info.value.field == "type"


@pytest.mark.parametrize("bad_id", ["", "a\nb", "x" * 129, 42])
def test_invalid_event_id_is_an_error(bad_id: object) -> None:
    with pytest.raises(ValidationError) as info:
        Event(type="user.created", id=bad_id)  # type: ignore[arg-type]
    assert info.value.field == "id"


def test_empty_version_is_an_error() -> None:
    with pytest.raises(ValidationError) as info:
        Event(type="user.created", version="")
    assert info.value.field == "version"


def test_registered_payload_gives_type_and_topic() -> None:
    payload = UserCreated(user_id="u1", email="a@example.com")
    for event in (Event.of(payload), Event(data=payload)):
        assert event.type == "evtest.user.created"
        assert event.topic == "evtest"
        assert event.data is payload
    assert registered_type("evtest.user.created") is UserCreated


def test_registration_can_set_a_default_topic() -> None:
    event = Event.of(InvoicePaid(invoice_id="i1", amount_cents=100))
    assert (event.type, event.topic) == ("evtest.invoice.paid", "invoices")
    # The registered default topic also applies when only the type is given.
    assert Event(type="evtest.invoice.paid", data={}).topic == "invoices"


def test_event_of_needs_a_registered_class() -> None:
    class NotRegistered(msgspec.Struct):
        x: int

    with pytest.raises(ValidationError) as info:
        Event.of(NotRegistered(x=1))
    assert info.value.field == "data"


def test_a_tag_cannot_be_registered_to_two_classes() -> None:
    with pytest.raises(ValidationError) as info:

        @event_type("evtest.user.created")
        class Impostor(msgspec.Struct):
            x: int

    assert "already registered" in str(info.value)
    assert registered_type("evtest.user.created") is UserCreated


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": "User.Created"}, "type"),
        ({"type": ["user.created"]}, "type"),
        ({"type": "user.created", "topic": "Users"}, "topic"),
        ({"type": "user.created", "topic": ("users",)}, "topic"),
    ],
    ids=repr,
)
def test_invalid_names_are_errors_every_time(fields: dict[str, object], field: str) -> None:
    Event(type="user.created", topic="users")  # valid names, now known to be valid
    for _ in range(2):  # an invalid name is never remembered as checked
        with pytest.raises(ValidationError) as info:
            Event(**fields)  # type: ignore[arg-type]
        assert info.value.field == field


class LoudFloat(float):
    pass


def test_metadata_of_a_subclass_gets_the_full_check() -> None:
    with pytest.raises(ValidationError):
        Event(type="user.created", metadata={"a": LoudFloat("nan")})
    assert Event(type="user.created", metadata={"a": LoudFloat(2.5)}).metadata == {"a": 2.5}
