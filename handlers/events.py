"""The application's typed events (the seed's UserCreated / OrderCreated shape)."""

from __future__ import annotations

import msgspec

from chi_redis import event_type


@event_type("user.created")
class UserCreated(msgspec.Struct, kw_only=True):
    user_id: str
    email: str
    name: str = ""


@event_type("user.updated")
class UserUpdated(msgspec.Struct, kw_only=True):
    user_id: str
    changes: dict[str, str] = {}


@event_type("order.created")
class OrderCreated(msgspec.Struct, kw_only=True):
    order_id: str
    user_id: str
    amount_cents: int
    items: list[str] = []


@event_type("security.login_failed")
class LoginFailed(msgspec.Struct, kw_only=True):
    user_id: str
    ip: str
    attempts: int = 1
