"""Subscription: its registry record, topics, consumers, pending entries; rewind it.

Rewind is ``chi-redis subscriptions rewind`` (:func:`chi_redis.ops.registry.rewind`): the
form asks first (a confirmation page says what will be delivered again), and re-delivering
entries the subscription already handled needs the same explicit "force" as the CLI.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...errors import NotFoundError, ValidationError
from ...events.names import validate_name
from ...ops.inspect import consumers, pending_entries
from ...ops.registry import registry, rewind
from ...ops.stats import collect
from ...ops.timeparse import parse_time
from ..app import console_of

__all__ = ["routes"]

#: Pending entries shown per stream.
PENDING_SHOWN = 100


def subscription_page(request: Request) -> Response:
    console = console_of(request)
    name = validate_name(request.path_params["name"], "subscription")
    bus = console.bus
    record = registry(bus).get(name)
    stats = next((s for s in collect(bus).subscriptions if s.name == name), None)
    if record is None and stats is None:
        raise NotFoundError(f"unknown subscription {name!r}: not registered and no group")
    topics = stats.topics if stats else []
    return console.render(
        request, "subscription.html", name=name, record=record, stats=stats, topics=topics,
        consumers=consumers(bus, name, topics),
        pending=pending_entries(bus, name, topics, PENDING_SHOWN),
    )


async def rewind_action(request: Request) -> Response:
    console = console_of(request)
    name = validate_name(request.path_params["name"], "subscription")
    who, form = await console.act(request, f"rewind {name}")
    to = str(form.get("to") or "").strip()
    if not to:
        raise ValidationError("give the time (or stream id) to rewind to", field="to")
    point = parse_time(to, field="to")
    force = form.get("force") == "yes"
    if form.get("confirmed") != "yes":
        return console.render(
            request, "confirm.html", title=f"Rewind {name}?",
            question=(f"Move every consumer group of {name!r} back to {point.iso()}: the"
                      " entries from there on are delivered to its handlers again."),
            action=f"/subscriptions/{name}/rewind", fields={"to": to},
            force_label="Also when entries it already handled would be delivered again",
        )
    done = await run_in_threadpool(rewind, console.bus, name, point, None, force=force)
    console.log(request, who, "rewind", subscription=name, to=point.iso(), force=force,
                topics=",".join(done))
    if not done:
        raise NotFoundError(f"subscription {name!r} has no consumer group on any topic")
    return console.done(f"/subscriptions/{name}",
                        f"rewound {name} on {', '.join(done)} to {point.iso()}")


def routes() -> list[Route]:
    return [
        Route("/subscriptions/{name}", subscription_page),
        Route("/subscriptions/{name}/rewind", rewind_action, methods=["POST"]),
    ]
