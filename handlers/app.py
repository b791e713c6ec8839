"""The seed's example handlers, registered on a bus.

- ``welcome-email``: a welcome mail on ``user.created``.
- ``user-audit``: every ``user.*`` event into the audit log.
- ``created-audit``: every ``*.created`` event (any topic) into the audit log.
- ``order-processor``: ``order.created`` → order bookkeeping.
- ``security-alerts``: ``security.*`` with the top priority (runs first when saturated).
"""

from __future__ import annotations

import logging

import msgspec
import redis

from chi_redis import Event, EventBus

from .events import LoginFailed, OrderCreated, UserCreated
from .mail import FakeMailer, Mail

logger = logging.getLogger(__name__)


class AuditLog:
    """Appends one JSON line per handled event to a Redis list (the app's audit store)."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key

    def record(self, source: str, event: Event) -> None:
        line = {"by": source, "id": event.id, "type": event.type, "topic": event.topic}
        self.client.rpush(self.key, msgspec.json.encode(line))

    def entries(self) -> list[dict[str, str]]:
        return [msgspec.json.decode(x) for x in self.client.lrange(self.key, 0, -1)]


def register(bus: EventBus, mailer: FakeMailer, audit: AuditLog) -> None:
    """Register the example subscriptions on ``bus``."""

    @bus.subscribe("welcome-email", types=["user.created"], dedupe=True)
    def welcome_email(event: Event) -> None:
        user = event.data
        if not isinstance(user, UserCreated):
            raise TypeError(f"unexpected payload {type(user).__name__}")
        body = f"Hello {user.name or user.user_id}"
        mailer.send(Mail(to=user.email, subject="Welcome!", body=body, event_id=event.id))

    @bus.subscribe("user-audit", types=["user.*"])
    def user_audit(event: Event) -> None:
        audit.record("user-audit", event)

    @bus.subscribe("created-audit", types=["*.created"])
    def created_audit(event: Event) -> None:
        audit.record("created-audit", event)

    @bus.subscribe("order-processor", types=["order.created"], max_retries=3, min_backoff_ms=500)
    def process_order(event: Event) -> None:
        order = event.data
        if not isinstance(order, OrderCreated):
            raise TypeError(f"unexpected payload {type(order).__name__}")
        if order.amount_cents < 0:
            raise ValueError(f"order {order.order_id} has a negative amount")
        bus.client.hincrby(f"{bus.namespace}:app:orders", order.user_id, order.amount_cents)

    @bus.subscribe("security-alerts", types=["security.*"], priority=100)
    def security_alert(event: Event) -> None:
        if isinstance(event.data, LoginFailed):
            logger.warning("login failed for %s from %s", event.data.user_id, event.data.ip)
        audit.record("security-alerts", event)


def app_keys(namespace: str) -> tuple[str, str]:
    """The Redis keys of the fake mailer and the audit log under ``namespace``."""
    return f"{namespace}:app:mail", f"{namespace}:app:audit"
