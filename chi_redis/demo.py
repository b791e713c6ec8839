"""A five-minute tour: ``chi-redis demo`` (or ``python -m chi_redis.demo`` for Redis only).

Publishes a few typed events (the seed's ``UserCreated`` / ``OrderCreated``), a batch and a
buffered async stream, queries them back by id, by topic and by time, then runs the example
handlers (``handlers/``): a welcome mail, two audits, order bookkeeping, a security alert,
and a poison order that ends in the dead letters.  On Redis the handlers run in a real
``dramatiq chi_redis.worker`` process; on the embedded bus (``chi-redis demo --embedded``,
or when no Redis answers) on an in-process worker.  Everything lives under the ``demo``
namespace (``--namespace``) and is deleted at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import click
import msgspec

# The example app's payload classes (the seed's): its handlers check the payload's class.
from handlers.events import OrderCreated, UserCreated

from .backend.connection import DEFAULT_URL
from .backend.memory import embedded_async_client, is_embedded
from .errors import ChiError
from .events.event import Event
from .publish.aio import AsyncEventBus
from .publish.buffered import BufferedPublisher
from .publish.bus import EventBus


def show(event: Event) -> str:
    return f"{event.timestamp:%H:%M:%S.%f} {event.type:<14} {event.data!r}"


def publish(bus: EventBus) -> Event:
    click.echo("\n== publish")
    user = Event.of(UserCreated(user_id="u-1", email="ada@example.com", name="Ada"))
    click.echo(f"user.created -> stream id {bus.publish(user)}")
    order = Event.of(OrderCreated(order_id="o-1", user_id="u-1", amount_cents=4200))
    first = bus.publish(order, idempotency_key="checkout-o-1")
    again = bus.publish(
        Event.of(OrderCreated(order_id="o-1", user_id="u-1", amount_cents=4200)),
        idempotency_key="checkout-o-1",
    )
    click.echo(f"order.created -> {first}; same idempotency key again -> {again} (not re-written)")

    now = datetime.now(UTC)
    batch = [
        Event.of(
            OrderCreated(order_id=f"o-{i}", user_id=f"u-{i % 3}", amount_cents=100 * i),
            # Back-filled events keep their own time: the time index is by event time.
            timestamp=now - timedelta(minutes=i),
            metadata={"source": "demo", "batch": True},
        )
        for i in range(2, 22)
    ]
    ids = bus.publish_batch(batch)
    click.echo(f"publish_batch: {len(ids)} orders in order, {ids[0]} .. {ids[-1]}")
    return user


async def publish_buffered(bus: EventBus, url: str) -> None:
    click.echo("\n== buffered async publisher")
    abus = (AsyncEventBus(embedded_async_client(bus.client), namespace=bus.namespace)
            if is_embedded(bus.client) else AsyncEventBus.from_url(url, namespace=bus.namespace))
    failures: list[int] = []
    try:
        async with BufferedPublisher(
            abus, on_error=lambda events, exc: failures.append(len(events))
        ) as publisher:
            for i in range(100):
                event = Event(type="metric.sampled", data={"i": i})
                await publisher.publish(event)
            await publisher.flush()
            click.echo(
                f"100 events queued and flushed: {publisher.published_count} written,"
                f" {publisher.failed_count} failed"
            )
    finally:
        await abus.close()


def query(bus: EventBus, user: Event) -> None:
    store = bus.store
    click.echo("\n== query")
    loaded = store.load(user.id)
    click.echo(f"load({user.id[:13]}...) -> {type(loaded.data).__name__ if loaded else None}")
    click.echo("load_by_topic('order', offset=0, limit=3):")
    for event in store.load_by_topic("order", limit=3):
        click.echo(f"  {show(event)}")
    now = datetime.now(UTC)
    window = store.load_by_time_range(
        now - timedelta(minutes=5, seconds=30), now, types=["order.*"]
    )
    click.echo(f"orders with event time in the last 5.5 minutes: {len(window)}")
    for event in window[:3]:
        click.echo(f"  {show(event)}")
    pages, cursor, seen = 0, None, 0
    while True:
        page, cursor = store.page_by_topic("order", after=cursor, limit=8)
        if not page:
            break
        pages, seen = pages + 1, seen + len(page)
    click.echo(f"page_by_topic('order', limit=8): {seen} events in {pages} pages")
    click.echo(f"topics: {', '.join(store.topics())}")


def _wait(check: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def run_handlers(bus: EventBus, redis_url: str) -> None:
    """Start the example worker, publish the seed's events, show what the handlers did."""
    click.echo("\n== subscriptions: the example handlers in a real worker process")
    ns = bus.namespace
    env = {**os.environ, "CHI_REDIS_URL": redis_url, "CHI_NAMESPACE": ns}
    cmd = [sys.executable, "-m", "dramatiq", "chi_redis.worker", "handlers.worker",
           "--processes", "1", "--threads", "2"]
    click.echo("$ " + " ".join(["dramatiq", *cmd[3:]]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        exercise_handlers(bus)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_handlers_in_process(bus: EventBus) -> None:
    """The example handlers on an in-process worker of ``bus`` (the embedded bus's way)."""
    from handlers.app import AuditLog, app_keys, register
    from handlers.mail import FakeMailer

    from .embedded import InProcessWorker

    click.echo("\n== subscriptions: the example handlers on an in-process worker")
    mail_key, audit_key = app_keys(bus.namespace)
    register(bus, FakeMailer(bus.client, mail_key), AuditLog(bus.client, audit_key))
    click.echo("InProcessWorker(bus, threads=2): Dramatiq's Worker on threads of this process")
    # The worker logs each failed attempt with its traceback: the tour shows the outcome.
    quiet = [logging.getLogger(name) for name in ("dramatiq", "chi_redis.runtime")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        with InProcessWorker(bus, threads=2):
            exercise_handlers(bus)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def exercise_handlers(bus: EventBus) -> None:
    """Publish the seed's events to the running example handlers and show what they did."""
    ns, client = bus.namespace, bus.client
    if not _wait(lambda: client.hlen(bus.keys.subs()) >= 5, 60):
        click.echo("the worker did not start within 60 s", err=True)
        return
    bus.publish_batch([
        Event.of(UserCreated(user_id="u-9", email="grace@example.com", name="Grace")),
        Event.of(OrderCreated(order_id="o-9", user_id="u-9", amount_cents=990)),
        Event(type="security.login_failed", data={"user_id": "u-9", "ip": "192.0.2.7"}),
        Event.of(OrderCreated(order_id="o-bad", user_id="u-9", amount_cents=-1)),
    ])
    mail_key, audit_key = f"{ns}:app:mail", f"{ns}:app:audit"
    orders_key = f"{ns}:app:orders"
    _wait(lambda: client.llen(mail_key) >= 1 and client.llen(audit_key) >= 5
          and client.hexists(orders_key, "u-9"), 60)
    for raw in client.lrange(mail_key, 0, -1):
        mail = msgspec.json.decode(raw)
        click.echo(f"welcome-email   sent {mail['subject']!r} to {mail['to']}")
    for raw in client.lrange(audit_key, 0, -1):
        line = msgspec.json.decode(raw)
        click.echo(f"{line['by']:<15} recorded {line['type']}")
    total = client.hget(orders_key, "u-9")
    click.echo(f"order-processor booked {int(total or 0)} cents for u-9")
    click.echo("order o-bad (negative amount) fails; retried with backoff, then ...")
    if _wait(lambda: bus.dead_letters("order-processor"), 90):
        dead = bus.dead_letters("order-processor")[0]
        click.echo(f"dead letter {dead.id}: {dead.reason} after {dead.attempts} attempts,"
                   f" {dead.error_type}: {dead.error}")
        if not is_embedded(client):  # the embedded bus is gone when this process ends
            click.echo("inspect: chi-redis dlq list order-processor --namespace " + ns)


def cleanup(bus: EventBus) -> int:
    """Delete the demo's keys (SCAN on the namespace's own prefix, never KEYS)."""

    def unlink_all() -> int:
        keys = list(bus.client.scan_iter(match=f"{bus.namespace}:*", count=1000))
        if keys:
            bus.client.unlink(*keys)
        return len(keys)

    return int(bus.call(unlink_all))


def tour(bus: EventBus, redis_url: str, *, handlers: bool = True, keep: bool = False) -> None:
    """The whole tour on ``bus``; deletes its keys at the end unless ``keep``."""
    namespace = bus.namespace
    click.echo(f"chi-redis demo on {bus!r}")
    try:
        user = publish(bus)
        asyncio.run(publish_buffered(bus, redis_url))
        query(bus, user)
        if handlers and is_embedded(bus.client):
            run_handlers_in_process(bus)
        elif handlers:
            run_handlers(bus, redis_url)
    finally:
        if keep:
            click.echo(f"\nkept the keys under {namespace}:*")
        else:
            with contextlib.suppress(ChiError):  # Redis is gone: nothing to clean
                click.echo(f"\ncleaned up {cleanup(bus)} keys under {namespace}:*")
        bus.close()


@click.command()
@click.option("--redis-url", envvar="CHI_REDIS_URL", default=DEFAULT_URL, show_default=True)
@click.option("--namespace", default="demo", show_default=True)
@click.option("--keep", is_flag=True, help="Keep the demo's keys in Redis.")
@click.option("--handlers/--no-handlers", default=True, show_default=True,
              help="Run the example handlers in a real worker process.")
def main(redis_url: str, namespace: str, keep: bool, handlers: bool) -> None:
    """Publish a few events and query them back (on Redis; ``chi-redis demo`` falls back to
    the embedded bus)."""
    try:
        tour(EventBus.from_url(redis_url, namespace=namespace), redis_url,
             handlers=handlers, keep=keep)
    except ChiError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
