"""The exception tree of chi-redis.

Every error a caller can catch subclasses :class:`ChiError`::

    ChiError
    ├── ValidationError (also ValueError)   bad input, caught before Redis is touched
    │   ├── InvalidNameError                a type, topic, subscription or namespace name
    │   ├── PayloadTooLargeError            the encoded event is over the size cap
    │   └── ConfigError                     a config file or setting is wrong
    ├── DecodeError                         a stream entry that cannot be decoded
    ├── RedisError                          Redis said no or could not be reached
    │   ├── RedisUnavailableError           connection refused, timed out, reset
    │   ├── RedisAuthError                  wrong or missing credentials, a disabled user
    │   ├── RedisTLSError                   the TLS handshake failed (certificate, host name)
    │   └── RedisFullError                  ``OOM command not allowed`` (maxmemory reached)
    ├── PublishError                        a batch was written only in part
    │   └── NotReplicatedError              written on the master, replicas not confirmed
    ├── BufferFullError                     the background publisher's buffer is full
    ├── BatchFailed                         a batch handler: these events of the batch failed
    └── NotFoundError                       an unknown subscription, event or dead letter

Messages never contain a password: URLs are passed through :func:`redact_url`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "BatchFailed",
    "BufferFullError",
    "ChiError",
    "ConfigError",
    "DecodeError",
    "InvalidNameError",
    "NotFoundError",
    "NotReplicatedError",
    "PayloadTooLargeError",
    "PublishError",
    "RedeliveryRefusedError",
    "RedisAuthError",
    "RedisError",
    "RedisFullError",
    "RedisTLSError",
    "RedisUnavailableError",
    "ValidationError",
    "redact_url",
]


class ChiError(Exception):
    """Base class of every chi-redis error."""


class ValidationError(ChiError, ValueError):
    """Input that fails validation; ``field`` names what was wrong."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class InvalidNameError(ValidationError):
    """A type, topic, subscription or namespace name outside the allowed pattern."""


class PayloadTooLargeError(ValidationError):
    """The encoded event is larger than ``max_event_bytes``."""

    def __init__(self, size: int, limit: int, *, field: str = "data", topic: str = "") -> None:
        super().__init__(
            f"event {field} is {size} bytes encoded, over the limit of {limit} bytes"
            + (f" (topic {topic!r})" if topic else "")
            + "; store large payloads elsewhere and publish a reference",
            field=field,
        )
        self.size = size
        self.limit = limit


class ConfigError(ValidationError):
    """A configuration value or file is wrong."""


class DecodeError(ChiError):
    """A stream entry that cannot be decoded into an event.

    ``kind`` says what is wrong, and is the reason its dead letter records: ``decode``
    (bytes that do not read as an event), ``missing_field``, ``schema`` (a payload that
    decodes but does not fit its registered type), ``invalid_type`` (not an event type
    name), ``too_large`` (over the size cap) or ``too_deep`` (nested too deeply).
    """

    def __init__(
        self, reason: str, *, stream: str = "", entry_id: str = "", kind: str = "decode"
    ) -> None:
        where = f" (stream {stream!r}, entry {entry_id})" if stream or entry_id else ""
        super().__init__(f"cannot decode entry{where}: {reason}")
        self.reason = reason
        self.stream = stream
        self.entry_id = entry_id
        self.kind = kind


class RedisError(ChiError):
    """Redis refused a command or could not be reached.

    ``outcome`` says what became of the command: ``"not_written"`` when it certainly changed
    nothing (no connection could be made, or Redis refused it: OOM, auth, loading), else
    ``"unknown"`` (it was sent and no reply came: it may have run).  A publish with an
    unknown outcome may be repeated with the same event: the publish script writes an event
    id once.
    """

    def __init__(self, message: str = "", *, outcome: str = "unknown") -> None:
        super().__init__(message)
        self.outcome = outcome


class RedisUnavailableError(RedisError):
    """Redis could not be reached (refused, reset, timed out) within the retry policy."""


class RedisAuthError(RedisError):
    """Redis rejected the credentials (or none were given)."""


class RedisTLSError(RedisError):
    """The TLS handshake failed: the server's certificate is not trusted (wrong or missing
    CA) or not valid for the host name connected to.  Not retried: it fails the same way
    every time."""


class RedisFullError(RedisError):
    """Redis refused a write because ``maxmemory`` is reached (noeviction)."""


class PublishError(ChiError):
    """A batch publish that was written only in part.

    ``written`` maps the index of each written event to its stream id; ``failed`` lists
    the indexes of events that were not written.  ``outcome`` is ``"known"`` when Redis was
    asked afterwards which events it holds (so ``failed`` were certainly not written), and
    ``"unknown"`` when it could not be asked: events in ``failed`` may have been written, and
    publishing them again is safe (an event id is written once).
    """

    def __init__(
        self, message: str, *, written: dict[int, str], failed: list[int], cause: Exception,
        outcome: str = "known",
    ) -> None:
        super().__init__(message)
        self.written = written
        self.failed = failed
        self.cause = cause
        self.outcome = outcome


class NotReplicatedError(PublishError):
    """``acks="replicas"``: the events WERE written on the master (they are in their streams
    and will be delivered), but fewer replicas than required confirmed them within the
    timeout (Redis ``WAIT``), so a failover of that master before they replicate may lose
    them.

    ``unconfirmed`` lists the indexes of those events; ``written`` maps every written
    event's index to its stream id (the unconfirmed ones included); ``failed`` lists the
    indexes of a batch's later events, not sent (publishing them again is safe);
    ``replicas`` maps each unconfirmed index to the number of replicas that confirmed it;
    ``required`` is ``min_replicas``.  Publishing an unconfirmed event again writes nothing
    (its id is written once) and waits for its replicas again.
    """

    def __init__(
        self, message: str, *, written: dict[int, str], failed: list[int],
        unconfirmed: list[int], replicas: dict[int, int], required: int,
    ) -> None:
        super().__init__(message, written=written, failed=failed, cause=ChiError(message))
        self.unconfirmed = unconfirmed
        self.replicas = replicas
        self.required = required


class BufferFullError(ChiError):
    """The background publisher's buffer is full and the policy is to raise."""


class BatchFailed(ChiError):
    """Raised by a batch handler (``batch_size=``) when only some events of its batch failed.

    ``failed`` names them, as events or event ids; the other events of the batch count as
    handled and are acked, the failed ones are retried as a smaller batch
    (docs/design.md §5.10).  ``cause`` is what went wrong (recorded in their dead letters
    if they end there).  A ``failed`` that names no event of the batch fails all of it.
    """

    def __init__(
        self, failed: Iterable[Any], cause: BaseException | None = None, message: str = ""
    ) -> None:
        self.failed = tuple(failed)
        self.cause = cause
        text = f"{len(self.failed)} event(s) of the batch failed"
        if cause is not None:
            text += f": {type(cause).__name__}: {cause}"
        super().__init__(message or text)

    def failed_ids(self) -> set[str]:
        """The ids of the events named failed (an event's ``id``, or the id given)."""
        return {str(getattr(f, "id", f)) for f in self.failed}


class NotFoundError(ChiError):
    """An unknown subscription, event or dead letter."""


class RedeliveryRefusedError(ChiError):
    """A rewind would hand a subscription entries it already handled (its side effects
    would run again) and ``force`` was not given."""


# The password part runs to the *last* "@" of the URL-like token, so a password holding
# "@", ":" or "/" (unescaped) is still hidden whole.  Matched token by token, in linear
# time: one regex over the whole text backtracks quadratically on a long word (an error
# message quoting a 1 MB name took minutes).
_TOKEN = re.compile(r"\S+")
_SCHEME = re.compile(r"(?<!\w)\w+://")
_USER = re.compile(r"[^:/@\s]*:")


def _scrub_token(match: re.Match[str]) -> str:
    tok = match.group()
    at = tok.rfind("@")
    if at < 0 or "://" not in tok:
        return tok
    for scheme in _SCHEME.finditer(tok, 0, at):
        user = _USER.match(tok, scheme.end(), at)
        if user is not None:
            return f"{tok[:user.end()]}***{tok[at:]}"
    return tok


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``; never raises.

    Everything between ``://`` and the last ``@`` is the user info: only a user name is
    kept, so even a password with unescaped ``@``, ``:`` or ``/`` does not leak.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    if ":" not in userinfo:  # a user name only
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def url_has_password(url: str) -> bool:
    """Whether ``url`` carries a password (so parse errors must not be echoed)."""
    return redact_url(url) != url


def scrub(text: str, *secrets: Any) -> str:
    """Remove every non-empty secret and any URL password from ``text``."""
    if "://" in text:
        text = _TOKEN.sub(_scrub_token, text)
    for secret in secrets:
        if secret:
            text = text.replace(str(secret), "***")
    return text
