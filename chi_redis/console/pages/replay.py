"""Replay: a range into one subscription, counted first (dry run), run in the background,
watched while it runs, resumed from its checkpoint.

A run is :func:`chi_redis.ops.replay.replay` with the CLI's target
(:func:`~chi_redis.ops.replay.choose_target`) and options, in a thread of the console
process; its progress is the callback the CLI's progress bar gets.  Every run started here
has a checkpoint (named on the form, or ``console-<time>``), so a run stopped (the console
restarted, Redis unreachable) is resumed exactly where it stopped, from this page or with
``chi-redis replay ... --checkpoint NAME``.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...errors import ChiError, ConfigError, ValidationError
from ...events.names import validate_glob, validate_name
from ...ops.checkpoint import list_checkpoints
from ...ops.replay import ReplayOptions, choose_target, estimate_total, replay
from ...ops.timeparse import parse_rate, parse_time
from ...store.history import By
from ..app import console_of

if TYPE_CHECKING:
    from ..app import Console

__all__ = ["ReplayJob", "ReplayJobs", "routes"]


@dataclass
class ReplayJob:
    """One replay started from the console."""

    no: int
    who: str
    sub: str
    topics: list[str]
    checkpoint: str
    total: int = 0  # entries in the range (an estimate until the run ends)
    done: int = 0  # entries read so far (the CLI's progress bar counts the same)
    delivered: int | None = None  # known at the end
    state: str = "running"  # running | complete | failed | stopped
    summary: str = ""
    started: float = field(default_factory=time.time)
    stop: threading.Event = field(default_factory=threading.Event, repr=False)


class ReplayJobs:
    """The replays this console process started (kept in memory, newest first)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.jobs: list[ReplayJob] = []
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def options(self, checkpoint: str | None, dry_run: bool,
                rate: float | None = None) -> ReplayOptions:
        """The CLI's defaults (config ``replay``), and its refusal when replay is off."""
        cfg = self.console.replay_config
        if not cfg.enabled:
            raise ConfigError("replay is disabled in the config (events.replay.enabled: false)")
        opts = ReplayOptions(batch_size=cfg.batch_size, workers=cfg.concurrent_workers,
                             dry_run=dry_run, checkpoint=checkpoint, rate=rate)
        opts.validate()
        return opts

    def count(self, sub: str, topics: list[str], by: By, since: Any, until: Any,
              types: list[str]) -> int:
        """The dry run: how many events the replay would deliver to ``sub``."""
        bus = self.console.bus
        target, default_topics = choose_target(bus, to_sub=sub)
        report = replay(bus, target, topics=topics or default_topics, by=by, since=since,
                        until=until, types=types, options=self.options(None, True))
        return report.delivered

    def start(self, who: str, sub: str, topics: list[str], by: By, since: Any, until: Any,
              types: list[str], checkpoint: str, rate: float | None = None) -> ReplayJob:
        bus = self.console.bus
        target, default_topics = choose_target(bus, to_sub=sub)
        topics = topics or default_topics
        opts = self.options(checkpoint, False, rate)
        job = ReplayJob(next(self._numbers), who, sub, topics, checkpoint)
        job.total = estimate_total(bus, topics, by, since, until)
        opts.stop = job.stop

        def progress(n: int) -> None:
            job.done += n

        def run() -> None:
            try:
                report = replay(bus, target, topics=topics, by=by, since=since, until=until,
                                types=types, options=opts, progress=progress)
                job.state, job.summary = "complete", report.summary()
                job.delivered = report.delivered
            except ChiError as exc:
                job.state = "stopped" if job.stop.is_set() else "failed"
                job.summary = str(exc)
                partial = getattr(exc, "report", None)
                job.delivered = partial.delivered if partial is not None else None
            # The estimate served while running; at the end the count read is exact.
            job.total = job.done if job.state == "complete" else max(job.total, job.done)

        with self._lock:
            self.jobs.insert(0, job)
        threading.Thread(target=run, name=f"chi-console-replay-{job.no}", daemon=True).start()
        return job

    def stop_all(self) -> None:
        for job in self.jobs:
            job.stop.set()


def _range(form: FormData) -> tuple[str, list[str], By, Any, Any, list[str]]:
    sub = validate_name(str(form.get("sub") or ""), "subscription")
    topics = [validate_name(t, "topic") for t in (str(x) for x in form.getlist("topic")) if t]
    by: By = "event-time" if form.get("by") == "event-time" else "append"
    since = str(form.get("since") or "").strip()
    until = str(form.get("until") or "").strip()
    lo = parse_time(since, field="since") if since else None
    hi = parse_time(until, field="until") if until else None
    types = [validate_glob(g.strip(), "types") for g in str(form.get("types") or "").split(",")
             if g.strip()]
    return sub, topics, by, lo, hi, types


def page(request: Request) -> Response:
    console = console_of(request)
    return console.render(request, "replay.html", **_context(console, request.query_params))


def _context(console: Console, values: Any, count: int | None = None) -> dict[str, Any]:
    from ...ops.registry import registry

    return {
        "subs": sorted(registry(console.bus)), "topics": console.bus.store.topics(),
        "jobs": console.jobs.jobs, "checkpoints": list_checkpoints(console.bus),
        "values": {k: values.get(k) or "" for k in
                   ("sub", "since", "until", "types", "by", "checkpoint", "rate")},
        "count": count,
    }


def jobs_partial(request: Request) -> Response:
    console = console_of(request)
    return console.render(request, "replay_jobs.html", jobs=console.jobs.jobs,
                          checkpoints=list_checkpoints(console.bus))


async def dry_run(request: Request) -> Response:
    """Counting changes nothing, yet it is a POST with the form's token like the rest."""
    console = console_of(request)
    form = await request.form()
    sub, topics, by, lo, hi, types = _range(form)
    n = await run_in_threadpool(console.jobs.count, sub, topics, by, lo, hi, types)
    return console.render(request, "replay.html", **_context(console, form, n))


async def start(request: Request) -> Response:
    console = console_of(request)
    who, form = await console.act(request, "replay")
    sub, topics, by, lo, hi, types = _range(form)
    name = str(form.get("checkpoint") or "").strip() or f"console-{int(time.time() * 1000)}"
    validate_name(name, "checkpoint")
    rate_text = str(form.get("rate") or "").strip()
    rate = parse_rate(rate_text) if rate_text else None
    job = await run_in_threadpool(console.jobs.start, who, sub, topics, by, lo, hi, types, name,
                                  rate)
    console.log(request, who, "replay", subscription=sub, topics=",".join(job.topics), by=by,
                since=lo.iso() if lo else "-", until=hi.iso() if hi else "-",
                types=",".join(types) or "-", checkpoint=name, rate=rate_text or "-")
    return console.done("/replay", f"replay #{job.no} started (checkpoint {name})")


async def resume(request: Request) -> Response:
    console = console_of(request)
    who, form = await console.act(request, "replay resume")
    name = validate_name(str(form.get("checkpoint") or ""), "checkpoint")
    found = {c.name: c for c in await run_in_threadpool(list_checkpoints, console.bus)}
    ckpt = found.get(name)
    if ckpt is None or ckpt.spec is None:
        raise ValidationError(f"no replay checkpoint {name!r}", field="checkpoint")
    target = str(ckpt.spec.get("target", ""))
    if not target.startswith("to:"):
        raise ValidationError(f"checkpoint {name!r} is not a replay into a subscription"
                              f" ({target}): resume it with chi-redis replay", field="checkpoint")
    spec = ckpt.spec
    job = await run_in_threadpool(
        console.jobs.start, who, target[3:], list(spec["topics"]), spec["by"], None, None,
        list(spec.get("types") or []), name)
    console.log(request, who, "replay resume", checkpoint=name, subscription=target[3:])
    return console.done("/replay", f"replay #{job.no} resumes checkpoint {name}")


async def stop(request: Request) -> Response:
    """Stop a run before its next delivery; its checkpoint stands right after the last one."""
    console = console_of(request)
    who, form = await console.act(request, "replay stop")
    no = str(form.get("job") or "")
    job = next((j for j in console.jobs.jobs if str(j.no) == no), None)
    if job is None:
        raise ValidationError(f"no replay #{no} in this console", field="job")
    job.stop.set()
    console.log(request, who, "replay stop", job=job.no, checkpoint=job.checkpoint)
    return console.done("/replay", f"replay #{job.no} stops (checkpoint {job.checkpoint})")


def routes() -> list[Route]:
    return [
        Route("/replay", page),
        Route("/partials/replay", jobs_partial),
        Route("/replay/count", dry_run, methods=["POST"]),
        Route("/replay/start", start, methods=["POST"]),
        Route("/replay/resume", resume, methods=["POST"]),
        Route("/replay/stop", stop, methods=["POST"]),
    ]
