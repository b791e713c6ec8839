"""Log in (the token, or the basic-auth user and password) and out.

A successful login sets a session cookie signed with a key of this console process
(HttpOnly, SameSite=Strict): the browser then acts without sending the token again.
Failed logins are logged like refused actions.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..app import console_of
from ..security import AUTH_COOKIE, CSRF_COOKIE, action_log, csrf_ok

__all__ = ["routes"]


def _safe_next(value: object) -> str:
    """Only a local path: never redirect to another site after a login."""
    text = str(value or "/")
    parts = urlsplit(text)
    return text if text.startswith("/") and not parts.netloc and not text.startswith("//") \
        else "/"


def login_page(request: Request) -> Response:
    console = console_of(request)
    return console.render(request, "login.html", next=_safe_next(request.query_params.get(
        "next")), error=None)


async def login(request: Request) -> Response:
    console = console_of(request)
    form = await request.form()
    remote = console.remote(request)
    nxt = _safe_next(form.get("next"))
    if not csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
        action_log.warning("refused login from %s: bad CSRF token", remote)
        return console.render(request, "login.html", status=403, next=nxt,
                              error="the form's CSRF token is missing or stale: try again")
    who = console.creds.check_pair(str(form.get("user") or ""),
                                   str(form.get("password") or ""))
    if who is None:
        action_log.warning("refused login from %s: wrong credential", remote)
        return console.render(request, "login.html", status=401, next=nxt,
                              error="wrong token or user/password")
    action_log.info("login by %s from %s", who, remote)
    response = RedirectResponse(nxt, status_code=303)
    response.set_cookie(AUTH_COOKIE, console.creds.session_cookie(who), httponly=True,
                        samesite="strict")
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(AUTH_COOKIE)
    return response


def routes() -> list[Route]:
    return [
        Route("/login", login_page),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
