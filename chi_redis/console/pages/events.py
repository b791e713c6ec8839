"""Events: browse a topic by time range and type glob; open one event by id.

The listing is ``chi-redis events list`` (:func:`chi_redis.ops.inspect.iter_events`), the
single event ``chi-redis events get`` (:func:`~chi_redis.ops.inspect.get_event`), both
redacted before rendering; where each subscription stands with the event comes from
:func:`~chi_redis.ops.inspect.handled_by`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import msgspec
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ...events.names import validate_glob, validate_name
from ...ops.inspect import get_event, handled_by, iter_events
from ...ops.timeparse import parse_time
from ...store.history import By
from ..app import console_of

__all__ = ["routes"]

#: Events shown per page.
PAGE = 100


def browse(request: Request) -> Response:
    console = console_of(request)
    q = request.query_params
    bus = console.bus
    topics = bus.store.topics()
    topic = q.get("topic") or ""
    since, until, types = q.get("since") or "", q.get("until") or "", q.get("types") or ""
    by: By = "event-time" if q.get("by") == "event-time" else "append"
    offset = max(int(q.get("offset") or 0), 0) if (q.get("offset") or "0").isdigit() else 0
    found: list[dict[str, Any]] = []
    if topic:
        validate_name(topic, "topic")
        lo = parse_time(since, field="since") if since else None
        hi = parse_time(until, field="until") if until else None
        globs = [validate_glob(g.strip(), "types") for g in types.split(",") if g.strip()]
        found = [console.redactor(e) for e in iter_events(
            bus, [topic], by, lo, hi, globs, limit=PAGE, offset=offset)]
    return console.render(
        request, "events.html", topics=topics, topic=topic, since=since, until=until,
        types=types, by=by, events=found, offset=offset, page=PAGE,
    )


def one(request: Request) -> Response:
    console = console_of(request)
    ref = request.path_params["ref"]
    topic = request.query_params.get("topic") or None
    env = get_event(console.bus, ref, topic)
    handling = handled_by(console.bus, env["topic"], env["stream_id"], env.get("id", ""),
                          env.get("type", ""))
    shown = console.redactor(env)
    return console.render(
        request, "event.html", env=shown, handling=handling,
        env_json=msgspec.json.format(msgspec.json.encode(shown), indent=2).decode(),
    )


def open_ref(request: Request) -> Response:
    """The "open by id" form: on to the event's own address."""
    ref = (request.query_params.get("ref") or "").strip()
    topic = request.query_params.get("topic")
    if not ref:
        return RedirectResponse("/events", status_code=303)
    suffix = f"?topic={quote(topic)}" if topic else ""
    return RedirectResponse(f"/events/{quote(ref, safe='')}{suffix}", status_code=303)


def routes() -> list[Route]:
    return [Route("/events", browse), Route("/event", open_ref), Route("/events/{ref}", one)]
