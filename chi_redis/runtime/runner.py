"""Running a subscription's handler inside a Dramatiq actor.

The actor receives ``(topic, fields)`` — the raw stream entry — and decodes it here, in the
worker thread, so a payload that cannot be decoded raises :class:`~chi_redis.DecodeError`,
which every subscription lists in ``throws``: it goes straight to the dead letters.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.common import iter_queue

from ..observe import metrics, tracing
from .crashes import record_start
from .dedupe import Dedupe
from .inline import remember_worker
from .subscriptions import Delivery, Subscription

if TYPE_CHECKING:
    from .broker import StreamsBroker

__all__ = ["ChiMiddleware", "current_message", "make_runner"]

_local = threading.local()
_DURATION = "chi_handler_duration_seconds"


def current_message() -> Any:
    """The message proxy the current worker thread is processing (or None)."""
    return getattr(_local, "message", None)


class ChiMiddleware(dramatiq.Middleware):
    """Tracks the current message per thread, times it (for the adaptive prefetch and
    ``chi_handler_duration_seconds``), counts the starts of entries delivered again (what
    ``max_deliveries`` counts) and stamps the first failure time."""

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        # A bus built at import (chi_redis.worker) left the cluster question for now.
        bus = getattr(broker, "bus", None)
        if getattr(bus, "cluster_unknown", False):
            bus.adopt_cluster()  # type: ignore[union-attr]
        remember_worker(worker)  # its consumers may run fast messages inline (.inline)

    def before_process_message(self, broker: Any, message: Any) -> None:
        _local.message = message
        _local.started = time.monotonic()
        if getattr(message, "deliveries", 1) > 1:  # delivered again: count the start
            record_start(broker, message)  # (docs/design.md §5.5, runtime/crashes.py)

    def __init__(self) -> None:
        # Per queue: (its QueueState, whether it is a subscription); the per-message hook
        # then makes no attribute lookup through the message proxy and no metric lookup.
        self._queues: dict[str, tuple[Any, bool]] = {}

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        started = getattr(_local, "started", None)
        if started is not None:
            took = time.monotonic() - started
            # The proxy's __getattr__ costs a call per attribute: read the message itself.
            queue = getattr(message, "_message", message).queue_name
            known = self._queues.get(queue)
            if known is None:
                known = self._queue(broker, queue)
            state, is_sub = known
            if state is not None:
                state.observe_run(took)
                # The same measurement feeds the handler histogram (subscriptions only).
                if is_sub and metrics.enabled():
                    metrics.labelled(_DURATION, queue).observe(took)
        if exception is not None:
            options = message.options
            options.setdefault("first_failure", int(time.time() * 1000))
            # A retried copy lives in the private stream: keep where the event came from.
            if "src" not in options and hasattr(message, "entry_stream"):
                options["src"] = message.entry_stream
                options["src_id"] = message.entry_id.decode()
        _local.message = None

    def after_skip_message(self, broker: Any, message: Any) -> None:
        _local.message = None

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        """Stop the worker's consumers reading, and hand back the messages no worker thread
        has started: other workers take them at once, not after the shutdown timeout
        (Dramatiq requeues them only once its threads stopped; docs/operations.md)."""
        threads = getattr(worker, "consumers", {})
        for thread in threads.values():
            consumer: Any = getattr(thread, "consumer", None)
            if hasattr(consumer, "stopping"):
                consumer.stopping = True
        unstarted: dict[str, list[Any]] = {}
        for item in iter_queue(worker.work_queue):  # type: ignore[no-untyped-call]
            unstarted.setdefault(item.message.queue_name, []).append(item.message)
        for queue, messages in unstarted.items():
            threads[queue].requeue_messages(messages)

    def _queue(self, broker: Any, queue: str) -> tuple[Any, bool]:
        states = getattr(broker, "states", None)
        if states is None:  # another broker (tests): nothing to time
            return (None, False)
        known = (states[queue], queue in broker.subscriptions)
        if known[1] or queue in getattr(broker, "queues", ()):
            self._queues[queue] = known  # a subscription declared later is looked up again
        return known


def _loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop


def make_runner(broker: StreamsBroker, sub: Subscription) -> Any:
    """The actor function of ``sub``: decode, dedupe, call the handler (sync or async)."""
    codec = broker.bus.codec
    keys = broker.keys
    client = broker.client
    opts = sub.options

    handler = sub.handler
    wants_delivery = sub.wants_delivery
    dedupe = (Dedupe(client, broker.states[sub.name], broker.options.lease_ms,
                     opts.dedupe_ttl_ms) if opts.dedupe else None)

    def run(topic: str, fields: dict[str, bytes]) -> None:
        msg = current_message()
        if msg is None:  # called directly (tests, scripts): no stream context
            options: dict[str, Any] = {}
            raw = {k.encode(): v for k, v in fields.items()}
            src = src_id = ""
        else:
            options = msg.options
            # A fresh delivery from a topic stream carries its entry's fields as read;
            # retried copies and redrives come from the private stream with str keys.
            raw = getattr(msg, "entry_fields", None) or {k.encode(): v for k, v in fields.items()}
            src = options.get("src") or msg.entry_stream
            src_id = options.get("src_id") or msg.entry_id.decode()
        event = codec.decode(raw, topic=topic, stream=src, entry_id=src_id)
        attempt = options.get("retries", 0) + 1
        replay = bool(options.get("replay")) or bool(event.metadata.get("chi_replay"))
        if tracing.enabled():
            with tracing.handling(sub.name, topic, event, attempt=attempt,
                                  replay=replay) as span:
                if not call(event, options, src, src_id, attempt, replay):
                    span.duplicate()
            return
        call(event, options, src, src_id, attempt, replay)

    def call(
        event: Any, options: dict[str, Any], src: str, src_id: str, attempt: int, replay: bool
    ) -> bool:
        """Dedupe (claim the event id), then run the handler; whether it ran."""
        seen = keys.seen(sub.name, event.id) if dedupe is not None else ""
        claim = None
        # A targeted replay is an operator asking for the handler to run again: no claim.
        if dedupe is not None and not options.get("replay"):
            claim = dedupe.claim(seen)
            if claim is None:
                return False  # handled before: this copy is a duplicate
        try:
            if wants_delivery:
                result = handler(event, Delivery(
                    subscription=sub.name, attempt=attempt, stream=src, entry_id=src_id,
                    replay=replay,
                ))
            else:
                result = handler(event)
            if result is not None and inspect.isawaitable(result):
                _loop().run_until_complete(result)
        except BaseException:
            if dedupe is not None and claim is not None:
                dedupe.release(claim)
            raise
        if dedupe is not None:
            dedupe.done(seen, claim)
        return True

    ident = sub.name.replace("-", "_").replace(".", "_")
    run.__name__ = run.__qualname__ = f"chi_subscription_{ident}"
    run.__module__ = getattr(sub.handler, "__module__", __name__)
    return run
