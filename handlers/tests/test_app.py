"""The example app's own tests, written the way an application tests its handlers.

``chi_redis.testing.running("handlers.worker")`` imports the module that
``dramatiq chi_redis.worker handlers.worker`` runs, on an embedded bus (no Redis), and runs
its subscriptions on an in-process worker; ``drain()`` returns once every event was handled
or dead-lettered.  Run them with ``.venv/bin/python -m pytest handlers/tests``; the main suite
runs them in a fresh interpreter (tests/integration/test_example_app_tests.py), since
importing the app registers its payload classes for the whole process.
"""

from __future__ import annotations

import logging

import pytest

from chi_redis import Event
from chi_redis.testing import running
from handlers.events import LoginFailed, OrderCreated, UserCreated

WORKER = "handlers.worker"


def test_a_new_user_gets_a_welcome_mail_and_is_audited() -> None:
    with running(WORKER) as t:
        from handlers.worker import audit, mailer

        user = Event.of(UserCreated(user_id="u1", email="ada@example.com", name="Ada"))
        t.publish(user)
        t.drain(raise_errors=True)
        mails = mailer.recorded()
        assert [(m.to, m.subject, m.body, m.event_id) for m in mails] == [
            ("ada@example.com", "Welcome!", "Hello Ada", user.id)]
        assert sorted(e["by"] for e in audit.entries()) == ["created-audit", "user-audit"]


def test_orders_are_booked_per_user() -> None:
    with running(WORKER) as t:
        t.publish_batch([
            Event.of(OrderCreated(order_id="o1", user_id="u1", amount_cents=1250)),
            Event.of(OrderCreated(order_id="o2", user_id="u1", amount_cents=750)),
            Event.of(OrderCreated(order_id="o3", user_id="u2", amount_cents=100)),
        ])
        t.drain(raise_errors=True)
        booked = t.bus.client.hgetall(f"{t.bus.namespace}:app:orders")
        assert booked == {b"u1": b"2000", b"u2": b"100"}


def test_a_negative_order_is_retried_with_backoff_then_dead_lettered() -> None:
    with running(WORKER) as t:
        event = Event.of(OrderCreated(order_id="o-bad", user_id="u1", amount_cents=-1))
        t.publish(event)
        t.drain(timeout=120)  # max_retries=3 from 500 ms: a few seconds of backoff
        (dead,) = t.dead_letters("order-processor")
        assert (dead.reason, dead.attempts, dead.event_id) == ("retries_exhausted", 4, event.id)
        assert dead.error_type == "ValueError" and "negative amount" in dead.error
        assert [(f.subscription, f.event_id, f.attempt) for f in t.failures] == [
            ("order-processor", event.id, n) for n in (1, 2, 3, 4)]
        assert t.bus.client.hget(f"{t.bus.namespace}:app:orders", "u1") is None


def test_raise_errors_re_raises_the_handlers_exception() -> None:
    with running(WORKER) as t:
        t.publish(Event.of(OrderCreated(order_id="o-bad", user_id="u1", amount_cents=-1)))
        with pytest.raises(ValueError, match="order o-bad has a negative amount"):
            t.drain(raise_errors=True)


def test_a_failed_login_raises_a_security_alert(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="handlers.app")
    with running(WORKER) as t:
        from handlers.worker import audit

        t.publish(Event.of(LoginFailed(user_id="u1", ip="192.0.2.7")))
        t.drain(raise_errors=True)
        assert [e["by"] for e in audit.entries()] == ["security-alerts"]
    assert "login failed for u1 from 192.0.2.7" in caplog.text


def test_every_run_starts_from_an_empty_bus() -> None:
    with running(WORKER) as t:
        t.publish(Event.of(UserCreated(user_id="u1", email="a@example.com")))
        t.drain(raise_errors=True)
    with running(WORKER) as t:
        from handlers.worker import mailer

        assert mailer.recorded() == [] and t.store.load_by_topic("user") == []
        t.publish(Event.of(UserCreated(user_id="u2", email="b@example.com")))
        t.drain(raise_errors=True)
        assert [m.to for m in mailer.recorded()] == ["b@example.com"]
