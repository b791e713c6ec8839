"""The consumers of the RabbitMQ bus: N threads, each with its own connection and prefetch.

A message is acknowledged only after its handler returned, or after what replaces it (a
retry, a dead letter) was confirmed by the broker: at-least-once.  On a handler error the
message is republished to the subscription's delay queue for ``backoff_ms(failures)``
(a queue with that ``x-message-ttl`` that dead-letters back into the subscription queue)
with ``chi-retries`` one higher; after ``max_retries`` retries, or at once for an error in
``throws``, and for a body that is not a chi event, it goes to the dead-letter exchange
with ``chi-reason``, ``chi-error-type`` and ``chi-error`` headers.  A worker that dies
mid-handler leaves the message unacknowledged: RabbitMQ delivers it again, at most
``x-delivery-limit`` times (docs/buses.md "RabbitMQ").
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import DecodeError
from ..events.event import new_event_id
from ..events.filters import EntryView
from ..observe.logs import redact
from ..runtime.subscriptions import Delivery, Subscription
from . import BusUnavailableError
from .amqp import backoff_ms, decode_message, pika_module

if TYPE_CHECKING:
    from .rabbitmq import RabbitMQEventBus

__all__ = ["ERROR_CHARS", "RabbitMQWorker"]

logger = logging.getLogger(__name__)

#: How much of a handler's error a dead letter keeps (``chi-error``).
ERROR_CHARS = 1000
#: Headers a retry or a redrive resets.
DEAD_HEADERS = ("chi-reason", "chi-error-type", "chi-error", "chi-dl-id", "chi-dead-ms",
                "chi-subscription", "chi-attempts")


class RabbitMQWorker:
    """Runs every subscription registered on a :class:`RabbitMQEventBus` (BusWorker)."""

    def __init__(self, bus: RabbitMQEventBus, *, threads: int = 4, prefetch: int = 4) -> None:
        if threads < 1 or prefetch < 1:
            raise ValueError("threads and prefetch must be at least 1")
        self.bus = bus
        self.threads = threads
        self.prefetch = prefetch
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ready = threading.Semaphore(0)

    def start(self) -> None:
        """Declare the queues, start the consumer threads, and return once all consume."""
        if not self.bus.subscriptions:
            raise ValueError("no subscription is registered on this bus")
        self.bus.declare()
        for i in range(self.threads):
            t = threading.Thread(target=self._run, name=f"chi-rabbitmq-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        for _ in self._threads:  # each thread releases once, consuming or not
            self._ready.acquire(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Let handlers in flight finish (up to ``timeout_s``), then close: every message
        not acknowledged goes back to its queue."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def request_stop(self) -> None:
        """Ask the threads to stop (safe in a signal handler); :meth:`stop` waits for them."""
        self._stop.set()

    def join(self) -> None:
        """Wait until :meth:`stop` is called (from another thread or a signal handler)."""
        while not self._stop.wait(0.5):
            pass

    # one consumer thread ------------------------------------------------------------
    def _run(self) -> None:
        pika = pika_module()
        announced = threading.Event()  # start() waits until every thread announced once

        def announce() -> None:
            if not announced.is_set():
                announced.set()
                self._ready.release()

        delay = 0.5
        try:
            while not self._stop.is_set():
                conn = None
                try:
                    conn = self.bus.connect("worker")
                    self._consume(conn, announce)
                    delay = 0.5
                except (pika.exceptions.AMQPError, BusUnavailableError, OSError) as exc:
                    logger.warning("RabbitMQ consumer %s: %s; connecting again in %.1f s",
                                   threading.current_thread().name, type(exc).__name__, delay)
                    announce()
                    self._stop.wait(delay)
                    delay = min(delay * 2, 10.0)
                finally:
                    _close_quietly(conn)  # unacknowledged messages go back to their queues
        finally:
            announce()

    def _consume(self, conn: Any, announce: Callable[[], None]) -> None:
        channel = conn.channel()
        channel.confirm_delivery()  # a retry or dead letter is confirmed before the ack
        channel.basic_qos(prefetch_count=self.prefetch)
        for sub in self.bus.subscriptions.values():
            channel.basic_consume(self.bus.names.queue(sub.name),
                                  partial(self._on_message, sub), auto_ack=False)
        announce()
        while not self._stop.is_set():
            conn.process_data_events(time_limit=0.2)

    # one message ----------------------------------------------------------------------
    def _on_message(self, sub: Subscription, channel: Any, method: Any, props: Any,
                    body: bytes) -> None:
        queue = self.bus.names.queue(sub.name)
        try:
            event, meta = decode_message(self.bus.codec, props, body, queue)
        except DecodeError as exc:
            logger.warning("dead-lettering a message of %s that is not a chi event: %s",
                           queue, exc)
            self._dead_letter(channel, method, props, body, sub, "decode", exc)
            return
        if not sub.accepts(EntryView(event.type, event.topic, meta)):
            channel.basic_ack(method.delivery_tag)
            return
        headers = props.headers or {}
        failures = _int(headers.get("chi-retries"))
        attempt = failures + _int(headers.get("x-delivery-count")) + 1
        delivery = Delivery(subscription=sub.name, attempt=attempt, stream=queue,
                            entry_id=event.id)
        try:
            result = sub.call(event, delivery)
            if inspect.isawaitable(result):
                asyncio.run(_awaited(result))
        except Exception as exc:
            self._failed(channel, method, props, body, sub, failures + 1, exc)
            return
        channel.basic_ack(method.delivery_tag)

    def _failed(self, channel: Any, method: Any, props: Any, body: bytes, sub: Subscription,
                failures: int, exc: Exception) -> None:
        opts = sub.options
        if opts.throws and isinstance(exc, opts.throws):
            self._dead_letter(channel, method, props, body, sub, "not_retryable", exc, failures)
            return
        if failures > opts.max_retries:
            self._dead_letter(channel, method, props, body, sub, "retries_exhausted", exc,
                              failures)
            return
        delay = backoff_ms(opts, failures)
        logger.info("handler of %s failed (%s); retry %d/%d in %d ms", sub.name,
                    type(exc).__name__, failures, opts.max_retries, delay)
        headers = _clean(props.headers)
        headers["chi-retries"] = failures
        channel.basic_publish("", self.bus.names.retry_queue(sub.name, delay), body,
                              _with_headers(props, headers))
        channel.basic_ack(method.delivery_tag)

    def _dead_letter(self, channel: Any, method: Any, props: Any, body: bytes,
                     sub: Subscription, reason: str, exc: BaseException,
                     attempts: int | None = None) -> None:
        headers = _clean(props.headers)
        headers.update({
            "chi-reason": reason, "chi-error-type": type(exc).__name__,
            "chi-error": redact(str(exc))[:ERROR_CHARS], "chi-dl-id": new_event_id(),
            "chi-dead-ms": int(time.time() * 1000), "chi-subscription": sub.name,
            "chi-attempts": attempts if attempts is not None else 1,
        })
        channel.basic_publish(self.bus.names.dead_exchange, self.bus.names.queue(sub.name),
                              body, _with_headers(props, headers))
        channel.basic_ack(method.delivery_tag)


def _close_quietly(conn: Any) -> None:
    if conn is not None and conn.is_open:
        try:
            conn.close()
        except Exception:  # already broken: nothing to hand back
            logger.debug("closing a consumer connection failed", exc_info=True)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _clean(headers: Any) -> dict[str, Any]:
    """A message's headers without those of an earlier failure."""
    if not isinstance(headers, dict):
        return {}
    return {k: v for k, v in headers.items() if k not in DEAD_HEADERS}


def _with_headers(props: Any, headers: dict[str, Any]) -> Any:
    pika = pika_module()
    return pika.BasicProperties(
        delivery_mode=2, message_id=props.message_id, type=props.type,
        timestamp=props.timestamp, content_type=props.content_type, headers=headers,
    )
