"""Dead letters: the list per subscription, one entry with its event and traceback tail,
redrive (one, selected, all) and purge (after a confirmation).

Everything goes through :mod:`chi_redis.ops.deadletters`, as ``chi-redis dlq`` does; the
event a dead letter holds is decoded as ``dlq show`` decodes it, then redacted.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...errors import ValidationError
from ...events.names import validate_name
from ...ops.deadletters import (
    count_dead_letters,
    get_dead_letter,
    list_dead_letters,
    purge,
    redrive,
)
from ...ops.stats import collect
from ...runtime.deadletters import DeadLetter, decode_body
from ..app import Console, console_of
from ..security import Redactor

__all__ = ["TRACEBACK_LINES", "routes"]

#: Lines of the traceback's tail shown on a dead letter's page.
TRACEBACK_LINES = 40
_ID = re.compile(r"\d{1,20}-\d{1,20}")
#: Dead letters shown per page.
PAGE = 100


def index(request: Request) -> Response:
    console = console_of(request)
    subs = list(collect(console.bus).subscriptions)
    subs.sort(key=lambda s: (-s.dead_letters, s.name))
    return console.render(request, "deadletters_index.html", subs=subs)


def listing(request: Request) -> Response:
    console = console_of(request)
    sub = validate_name(request.path_params["sub"], "subscription")
    after = request.query_params.get("after") or None
    letters = list_dead_letters(console.bus, sub, after=after, count=PAGE)
    return console.render(
        request, "deadletters.html", sub=sub, letters=[_view(console, d) for d in letters],
        total=count_dead_letters(console.bus, sub), page=PAGE,
        next_after=letters[-1].id if len(letters) == PAGE else None,
    )


def _event_of(console: Console, dl: DeadLetter) -> Any:
    if dl.kind not in ("event", "raw") or not dl.body:
        return None
    try:
        fields = decode_body(dl.body)
        env = console.bus.codec.envelope(dl.topic, dl.source_id.encode(), fields)
    except msgspec.DecodeError:
        return None
    return console.redactor(env)


def _view(console: Console, dl: DeadLetter, full: bool = False) -> dict[str, Any]:
    d = msgspec.structs.asdict(dl)
    d.pop("body")
    tb = Redactor.text(d.pop("traceback"))
    d["error"] = Redactor.text(d["error"])
    if full:
        d["traceback_tail"] = "\n".join(tb.rstrip().splitlines()[-TRACEBACK_LINES:])
        event = _event_of(console, dl)
        d["event_json"] = None if event is None else msgspec.json.format(
            msgspec.json.encode(event), indent=2).decode()
    return d


def one(request: Request) -> Response:
    console = console_of(request)
    sub = validate_name(request.path_params["sub"], "subscription")
    dl_id = request.path_params["dl_id"]
    if not _ID.fullmatch(dl_id):
        raise ValidationError(f"invalid dead-letter id {dl_id!r}: expected MS-SEQ", field="id")
    dl = get_dead_letter(console.bus, sub, dl_id)
    return console.render(request, "deadletter.html", sub=sub, d=_view(console, dl, full=True))


async def redrive_action(request: Request) -> Response:
    console = console_of(request)
    sub = validate_name(request.path_params["sub"], "subscription")
    who, form = await console.act(request, f"redrive {sub}")
    everything = form.get("all") == "yes"
    ids = [str(i) for i in form.getlist("id")]
    if not everything and not ids:
        raise ValidationError("choose dead letters to redrive (or all)", field="id")
    if everything and form.get("confirmed") != "yes":
        n = await run_in_threadpool(count_dead_letters, console.bus, sub)
        return console.render(
            request, "confirm.html", title=f"Redrive every dead letter of {sub}?",
            question=f"Put all {n} dead letter(s) of {sub!r} back on its queue, each once.",
            action=f"/deadletters/{sub}/redrive", fields={"all": "yes"}, force_label=None)
    n = await run_in_threadpool(redrive, console.bus, sub, None if everything else ids)
    console.log(request, who, "redrive", subscription=sub,
                ids="all" if everything else ",".join(ids), redriven=n)
    return console.done(f"/deadletters/{sub}", f"redriven {n} dead letter(s) of {sub}")


async def purge_action(request: Request) -> Response:
    console = console_of(request)
    sub = validate_name(request.path_params["sub"], "subscription")
    who, form = await console.act(request, f"purge {sub}")
    if form.get("confirmed") != "yes":
        n = await run_in_threadpool(count_dead_letters, console.bus, sub)
        return console.render(
            request, "confirm.html", title=f"Purge the dead letters of {sub}?",
            question=f"Delete all {n} dead letter(s) of {sub!r}. This cannot be undone.",
            action=f"/deadletters/{sub}/purge", fields={}, force_label=None)
    n = await run_in_threadpool(purge, console.bus, sub)
    console.log(request, who, "purge", subscription=sub, purged=n)
    return console.done(f"/deadletters/{sub}", f"purged {n} dead letter(s) of {sub}")


def routes() -> list[Route]:
    return [
        Route("/deadletters", index),
        Route("/deadletters/{sub}", listing),
        Route("/deadletters/{sub}/redrive", redrive_action, methods=["POST"]),
        Route("/deadletters/{sub}/purge", purge_action, methods=["POST"]),
        Route("/deadletters/{sub}/{dl_id}", one),
    ]
