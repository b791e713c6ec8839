"""Who may look, who may act, and what is never shown.

- Reading is open on a loopback bind; on any other bind every request needs a credential,
  and :func:`check_bind` refuses to start without one.
- Every action that changes state is a POST and needs a credential whatever the bind: the
  token (``CHI_CONSOLE_TOKEN``) as ``Authorization: Bearer``, the basic-auth pair
  (``CHI_CONSOLE_USER`` / ``CHI_CONSOLE_PASSWORD``), or the session cookie ``/login`` sets
  after checking one of those.  Without any credential configured the console is read-only.
- CSRF: a random token in a SameSite=Strict cookie must come back in the form
  (double submit), and a cross-origin ``Origin`` is refused.
- Redaction: values of redacted fields (the names given, and any name that says password,
  secret, token or API key) are replaced before a template sees them; every other string
  of an event, and free text (errors, tracebacks), passes through the log redaction (URL
  passwords, ``password=...``).
- Every action is logged on ``chi_redis.console.actions``: who (the credential's user or a
  token fingerprint), from where, what, and the outcome.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..observe.logs import redact

__all__ = [
    "AUTH_COOKIE",
    "CSRF_COOKIE",
    "Credentials",
    "Redactor",
    "action_log",
    "check_bind",
    "is_loopback",
]

AUTH_COOKIE = "chi_console_auth"
CSRF_COOKIE = "chi_console_csrf"
MASK = "***"
action_log = logging.getLogger("chi_redis.console.actions")
#: Field names redacted whatever the configuration says (as the log redaction does).
_SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|api[_-]?key|credential)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Credentials:
    """The credentials configured for the console (from the environment or options)."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    #: Signs the session cookie; new per process, so a restart logs everyone out.
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def configured(self) -> bool:
        return bool(self.token) or bool(self.user and self.password)

    def who_for_token(self) -> str:
        digest = hashlib.sha256((self.token or "").encode()).hexdigest()[:8]
        return f"token:{digest}"

    def check(self, authorization: str | None) -> str | None:
        """The identity an ``Authorization`` header proves, or None."""
        if not authorization or not self.configured:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and self.token:
            if hmac.compare_digest(value.strip().encode(), self.token.encode()):
                return self.who_for_token()
        elif scheme.lower() == "basic" and self.user and self.password:
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return self.check_pair(user, password)
        return None

    def check_pair(self, user: str, password: str) -> str | None:
        """The identity a user/password (or, user empty, a token) proves, or None."""
        if not user and self.token and hmac.compare_digest(password.encode(),
                                                           self.token.encode()):
            return self.who_for_token()
        if self.user and self.password and hmac.compare_digest(
                user.encode(), self.user.encode()) & hmac.compare_digest(
                password.encode(), self.password.encode()):
            return f"user:{self.user}"
        return None

    def session_cookie(self, who: str) -> str:
        """The cookie value that proves ``who`` logged in to this process."""
        mac = hmac.new(self.key, who.encode(), hashlib.sha256).hexdigest()
        return f"{who}|{mac}"

    def check_cookie(self, value: str | None) -> str | None:
        if not value or "|" not in value:
            return None
        who, _, mac = value.rpartition("|")
        want = hmac.new(self.key, who.encode(), hashlib.sha256).hexdigest()
        return who if hmac.compare_digest(mac, want) else None


def check_bind(host: str, creds: Credentials) -> None:
    """Refuse a bind other than loopback without a credential to guard it."""
    if not is_loopback(host) and not creds.configured:
        raise ConfigError(
            f"refusing to serve the console on {host}: a non-loopback bind needs"
            " CHI_CONSOLE_TOKEN, or CHI_CONSOLE_USER and CHI_CONSOLE_PASSWORD"
        )


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(cookie: str | None, form_value: Any) -> bool:
    return bool(cookie) and isinstance(form_value, str) and hmac.compare_digest(
        cookie.encode(), form_value.encode())  # type: ignore[union-attr]


class Redactor:
    """Replaces the values of redacted fields, at any depth, before anything renders them."""

    def __init__(self, fields: Iterable[str] = ()) -> None:
        self.fields = {f.strip().lower() for f in fields if f.strip()}

    def hides(self, name: str) -> bool:
        return name.lower() in self.fields or bool(_SECRET_NAME.search(name))

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: MASK if isinstance(k, str) and self.hides(k) else self(v)
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        if isinstance(value, str):  # a URL with its password, "password=..." in a note
            return redact(value)
        return value

    @staticmethod
    def text(value: str) -> str:
        """Free text (an error, a traceback): secrets in it redacted."""
        return redact(value)
