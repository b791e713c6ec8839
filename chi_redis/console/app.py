"""The console's ASGI application: shared state, rendering, the guard on every request.

:func:`create_app` builds a Starlette app around one :class:`Console`, which holds the bus,
the credentials, the redactor, the statistics sampler and the replay jobs.  The pages
(:mod:`chi_redis.console.pages`) are plain request handlers that read through the same
functions as the CLI (``chi_redis.ops``) and render Jinja2 templates (autoescaped).

Every state-changing handler starts with :meth:`Console.act`, which checks the credential,
the CSRF token and the origin, and logs who did what; reading handlers pass through
:class:`Guard`, which asks for a credential on a non-loopback bind.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from ..cli.options import iso_ms
from ..errors import ChiError, NotFoundError, ValidationError, scrub
from .sampler import Sampler, sparkline
from .security import (
    AUTH_COOKIE,
    CSRF_COOKIE,
    Credentials,
    Redactor,
    action_log,
    csrf_ok,
    new_csrf,
)

if TYPE_CHECKING:
    from ..config.schema import ReplayConfig
    from ..publish.bus import EventBus
    from .pages.replay import ReplayJobs

__all__ = ["Console", "console_of", "create_app"]

HERE = Path(__file__).parent
logger = logging.getLogger(__name__)
#: A consumer that read within this long counts as alive: workers read at least every
#: ``block_ms`` (1 s by default), so 15 s without a read means the worker is gone or stuck.
ALIVE_MS = 15_000


class Console:
    """What every page shares."""

    def __init__(
        self, bus: EventBus, creds: Credentials, *, loopback: bool = True,
        redact_fields: list[str] | None = None, sample_interval: float = 2.0,
        replay_config: ReplayConfig | None = None, alive_ms: int = ALIVE_MS,
    ) -> None:
        from ..config.schema import ReplayConfig
        from .pages.replay import ReplayJobs

        self.bus = bus
        self.creds = creds
        self.loopback = loopback
        self.alive_ms = alive_ms
        self.redactor = Redactor(redact_fields or [])
        self.sampler = Sampler(bus, interval=sample_interval)
        self.replay_config = replay_config or ReplayConfig()
        self.jobs: ReplayJobs = ReplayJobs(self)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.globals["sparkline"] = lambda pts: Markup(  # SVG of numbers only  # nosec B704
            sparkline(pts))
        self.env.filters["urlq"] = lambda v: quote(str(v), safe="")
        self.env.filters["iso_ms"] = iso_ms  # as `chi-redis dlq show` prints times
        self.secrets: list[str] = []

    # who ---------------------------------------------------------------------------------
    def identity(self, request: Request) -> str | None:
        """The identity the request's credential proves (header or login cookie), or None."""
        return self.creds.check(request.headers.get("authorization")) or \
            self.creds.check_cookie(request.cookies.get(AUTH_COOKIE))

    @staticmethod
    def remote(request: Request) -> str:
        return request.client.host if request.client else "-"

    # rendering ---------------------------------------------------------------------------
    def render(self, request: Request, template: str, status: int = 200,
               **ctx: Any) -> HTMLResponse:
        csrf = request.cookies.get(CSRF_COOKIE) or new_csrf()
        body = self.env.get_template(template).render(
            request=request, csrf=csrf, who=self.identity(request),
            can_act=self.creds.configured, message=request.query_params.get("msg"),
            **ctx)
        response = HTMLResponse(body, status_code=status)
        if CSRF_COOKIE not in request.cookies:
            response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict")
        return response

    def done(self, url: str, message: str) -> RedirectResponse:
        """After an action: back to ``url`` with ``message`` shown (POST-redirect-GET)."""
        sep = "&" if "?" in url else "?"
        return RedirectResponse(f"{url}{sep}msg={quote(message)}", status_code=303)

    # acting ------------------------------------------------------------------------------
    async def act(self, request: Request, what: str) -> tuple[str, FormData]:
        """Admit a state-changing request: its identity and form, or an HTTP error.

        Refused (and logged): no credential configured (the console is read-only), no
        valid credential (401), a cross-origin request or a missing/wrong CSRF token (403).
        """
        form = await request.form()
        remote = self.remote(request)
        if not self.creds.configured:
            action_log.warning("refused %s from %s: the console is read-only", what, remote)
            raise HTTPException(403, "the console is read-only: start it with"
                                     " CHI_CONSOLE_TOKEN (or CHI_CONSOLE_USER and"
                                     " CHI_CONSOLE_PASSWORD) to allow actions")
        who = self.identity(request)
        if who is None:
            action_log.warning("refused %s from %s: no valid credential", what, remote)
            raise HTTPException(401, "this action needs the console token: log in first")
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get(
                "host"):
            action_log.warning("refused %s by %s from %s: cross-origin (%s)", what, who,
                               remote, origin)
            raise HTTPException(403, "cross-origin request refused")
        if not csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
            action_log.warning("refused %s by %s from %s: bad CSRF token", what, who, remote)
            raise HTTPException(403, "the form's CSRF token is missing or stale: reload the"
                                     " page and try again")
        return who, form

    def log(self, request: Request, who: str, what: str, **details: Any) -> None:
        """Record an action taken: who, from where, what, with which arguments."""
        args = " ".join(f"{k}={v}" for k, v in details.items())
        action_log.info("action by %s from %s: %s %s", who, self.remote(request), what, args)


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


class Guard(BaseHTTPMiddleware):
    """On a non-loopback bind, every page but the login page and static files needs a
    credential; reading on loopback is open."""

    async def dispatch(self, request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        console = console_of(request)
        open_path = request.url.path in ("/login",) or request.url.path.startswith("/static/")
        if console.loopback or open_path or console.identity(request) is not None:
            return await call_next(request)
        if request.method == "GET":
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        return HTMLResponse("a credential is required", status_code=401)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return console_of(request).render(request, "error.html", status=exc.status_code,
                                      error=exc.detail)


async def _chi_error(request: Request, exc: Exception) -> Response:
    console = console_of(request)
    status = 404 if isinstance(exc, NotFoundError) else 400
    if not isinstance(exc, ValidationError | NotFoundError):
        status = 409 if isinstance(exc, ChiError) else 500
    text = Redactor.text(scrub(str(exc), *console.secrets))
    return console.render(request, "error.html", status=status, error=text)


def create_app(console: Console, *, sample: bool = True) -> Starlette:
    """The ASGI app; ``sample``: run the statistics sampler while the app runs."""
    from .pages import deadletters, events, login, overview, replay, subscription

    routes: list[BaseRoute] = [
        *overview.routes(), *subscription.routes(), *deadletters.routes(), *events.routes(),
        *replay.routes(), *login.routes(),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sample:
            console.sampler.start()
        yield
        console.sampler.stop()
        console.jobs.stop_all()

    app = Starlette(
        routes=routes, middleware=[Middleware(Guard)], lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, ChiError: _chi_error},
    )
    app.state.console = console
    return app
