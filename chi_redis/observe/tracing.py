"""OpenTelemetry tracing of publish and handle (``pip install chi-redis[otel]``).

Off unless :func:`configure` ``(True)`` ran (the worker does so for
``monitoring.tracing_enabled`` or ``CHI_TRACING=1``; an application publishing calls it
itself): while off, every hook is one ``if`` and OpenTelemetry is never imported, so the
package works without it installed.

The spans (``messaging.system=redis-streams``):

- ``chi publish <topic>`` (producer), one per topic of a publish call.  Each event written
  carries the span's W3C trace context in its metadata (``traceparent``, ``tracestate``:
  flat strings).  Its parent is the active span, else the context the event already carries
  (e.g. stamped when it entered an outbox).
- ``chi handle <subscription>`` (consumer), one per handler run, a child of the publish
  span: retries (their copy keeps the metadata), dead letters and redrives stay in the
  publisher's trace.  A replayed delivery (``chi_replay`` metadata, or a replay to a
  subscription) starts a new trace that *links* to the original one instead.
- ``chi dead_letter <subscription>``: the entry's move to the dead letters, in its trace.

Attributes: ``messaging.destination.name`` (topic), ``messaging.message.id`` (event id),
``messaging.consumer.group.name`` (subscription), ``chi.attempt``, ``chi.outcome`` (``ok``,
``failed``, ``duplicate``), ``chi.replay``, ``chi.reason`` (dead letters).  Exception
messages are redacted (:func:`chi_redis.observe.logs.redact`); payloads are never recorded.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .logs import redact

if TYPE_CHECKING:
    from ..events.event import Event

__all__ = [
    "SYSTEM",
    "TRACE_KEYS",
    "configure",
    "dead_lettered",
    "enabled",
    "env_enabled",
    "handling",
    "publishing",
]

logger = logging.getLogger(__name__)

SYSTEM = "redis-streams"
#: The metadata keys that carry the W3C trace context.
TRACE_KEYS = ("traceparent", "tracestate")
_TRUE = frozenset({"1", "true", "yes", "on"})
_tracer: Any = None
_propagator: Any = None


def env_enabled(env: Mapping[str, str]) -> bool:
    """Whether ``CHI_TRACING`` switches tracing on."""
    return env.get("CHI_TRACING", "").strip().lower() in _TRUE


def enabled() -> bool:
    """Whether spans are recorded in this process."""
    return _tracer is not None


def configure(on: bool, provider: Any = None) -> bool:
    """Switch tracing on (with ``provider``, default the global tracer provider) or off;
    whether it is on.  Without OpenTelemetry installed it stays off, with a warning."""
    global _tracer, _propagator
    if not on:
        _tracer = None
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )
    except ImportError:
        logger.warning("tracing is on but OpenTelemetry is not installed: nothing is traced"
                       " (pip install 'chi-redis[otel]')")
        _tracer = None
        return False
    _propagator = TraceContextTextMapPropagator()
    _tracer = trace.get_tracer("chi_redis", tracer_provider=provider)
    return True


def _carried(metadata: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(metadata[k]) for k in TRACE_KEYS if k in metadata}


def _fail(span: Any, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    text = redact(str(exc))[:500]
    span.add_event("exception", {"exception.type": type(exc).__name__,
                                 "exception.message": text})
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {text}"))


@contextlib.contextmanager
def publishing(events: Sequence[Event]) -> Iterator[list[Event]]:
    """Open the publish spans of ``events``; yields copies carrying their trace context
    (write those), ends the spans when the write returned or raised."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    active = trace.get_current_span().get_span_context().is_valid
    by_topic: dict[str, list[int]] = {}
    for i, event in enumerate(events):
        topic = getattr(event, "topic", None)
        if not isinstance(topic, str):  # not an Event: the write path rejects it untraced
            yield list(events)
            return
        by_topic.setdefault(topic, []).append(i)
    out = list(events)
    spans = []
    for topic, idx in by_topic.items():
        first = out[idx[0]]
        parent = None if active else _propagator.extract(_carried(first.metadata))
        attrs: dict[str, Any] = {"messaging.system": SYSTEM, "messaging.operation.type": "send",
                                 "messaging.destination.name": topic}
        if len(idx) == 1:
            attrs["messaging.message.id"] = first.id
        else:
            attrs["messaging.batch.message_count"] = len(idx)
        span = _tracer.start_span(f"chi publish {topic}", context=parent,
                                  kind=SpanKind.PRODUCER, attributes=attrs)
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=trace.set_span_in_context(span))
        for i in idx:
            e = out[i]
            out[i] = msgspec.structs.replace(e, metadata={**e.metadata, **carrier})
        spans.append(span)
    try:
        yield out
    except BaseException as exc:
        for span in spans:
            _fail(span, exc)
        raise
    finally:
        for span in spans:
            span.end()


class HandleSpan:
    """What the runner tells the handle span besides success or failure."""

    def __init__(self, span: Any) -> None:
        self.span = span
        self.outcome = "ok"

    def duplicate(self) -> None:
        """The event was handled before (dedupe): the handler did not run."""
        self.outcome = "duplicate"


@contextlib.contextmanager
def handling(
    subscription: str, topic: str, event: Event, *, attempt: int, replay: bool
) -> Iterator[HandleSpan]:
    """The handle span of one run of ``subscription``'s handler, active while it runs."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind

    origin = _propagator.extract(_carried(event.metadata))
    links = []
    if replay:  # a new trace, linked to the original publish
        original = trace.get_current_span(origin).get_span_context()
        if original.is_valid:
            links.append(Link(original, {"chi.link": "replay_of"}))
        origin = otel_context.Context()
    span = _tracer.start_span(
        f"chi handle {subscription}", context=origin, kind=SpanKind.CONSUMER, links=links,
        attributes={
            "messaging.system": SYSTEM, "messaging.operation.type": "process",
            "messaging.destination.name": topic, "messaging.consumer.group.name": subscription,
            "messaging.message.id": event.id, "chi.event_type": event.type,
            "chi.attempt": attempt, "chi.replay": replay,
        },
    )
    handle = HandleSpan(span)
    with trace.use_span(span, end_on_exit=True, record_exception=False,
                        set_status_on_exception=False):
        try:
            yield handle
        except BaseException as exc:
            span.set_attribute("chi.outcome", "failed")
            _fail(span, exc)
            raise
        else:
            span.set_attribute("chi.outcome", handle.outcome)


def dead_lettered(subscription: str, meta: bytes | str | None, fields: Mapping[str, Any]) -> None:
    """Record the move of an entry (whose metadata JSON is ``meta``) to the dead letters."""
    from opentelemetry.trace import SpanKind

    try:
        metadata = json.loads(meta) if meta else {}
    except ValueError:
        metadata = {}
    carried = _carried(metadata) if isinstance(metadata, dict) else {}
    span = _tracer.start_span(
        f"chi dead_letter {subscription}", context=_propagator.extract(carried),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": SYSTEM, "messaging.operation.type": "send",
            "messaging.destination.name": f"{subscription}.dlq",
            "messaging.consumer.group.name": subscription,
            "messaging.message.id": str(fields.get("event_id", "")),
            "chi.reason": str(fields.get("reason", "")),
            "chi.attempt": int(fields.get("attempts", 1) or 1),
        },
    )
    span.end()
