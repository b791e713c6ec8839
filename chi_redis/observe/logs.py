"""Logs of chi-redis: one logger tree (``chi_redis.*``), optional JSON lines, rate limits.

Every module logs to ``logging.getLogger(__name__)``.  With ``CHI_LOG_FORMAT=json`` the
worker (``chi_redis.worker``) and the CLI install :class:`JsonFormatter` on the root
logger's handlers: one JSON object per line with ``ts``, ``level``, ``logger``,
``message`` and, where the record carries them (``extra=``), ``subscription``, ``topic``,
``event_id``, ``type``, ``reason``, ``stream`` and ``count``.  Payloads are never logged;
messages and tracebacks pass through :func:`redact` (URL passwords, ``password=...``).

:class:`RateLimiter` keeps a storm (a thousand dead letters at once) to a bounded number of
lines and one ``… N more`` summary.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from ..errors import scrub

__all__ = ["FIELDS", "JsonFormatter", "RateLimiter", "install_json_logs", "redact",
           "use_json_logs"]

#: The context fields a record may carry (``extra=``) and a JSON line then includes.
FIELDS = ("subscription", "topic", "event_id", "type", "reason", "stream", "count")
_SECRET = re.compile(r"(?i)(password|passwd|secret|token|api[_-]?key)(['\"]?\s*[:=]\s*)(\S+)")


def redact(text: str) -> str:
    """Remove URL passwords and ``password=...``-style values from text."""
    return _SECRET.sub(r"\1\2***", scrub(text))


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (one line), secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None and value != "":
                out[name] = value if isinstance(value, int | float) else str(value)
        if record.exc_info:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else ""
            out["exc"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = redact(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def use_json_logs(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``CHI_LOG_FORMAT`` asks for JSON lines."""
    env = os.environ if env is None else env
    return env.get("CHI_LOG_FORMAT", "").strip().lower() == "json"


def install_json_logs(logger: logging.Logger | None = None) -> None:
    """Give every handler of ``logger`` (the root logger) a :class:`JsonFormatter`; add a
    stderr handler when it has none."""
    target = logger or logging.getLogger()
    if not target.handlers:
        target.addHandler(logging.StreamHandler())
        if target.level == logging.NOTSET or target.level > logging.INFO:
            target.setLevel(logging.INFO)
    for handler in target.handlers:
        handler.setFormatter(JsonFormatter())


class RateLimiter:
    """Lets through at most ``burst`` lines per ``window_s``; counts the rest.

    :meth:`allow` answers for one line; the first line allowed after a suppressed stretch,
    or :meth:`flush` (called from a loop, e.g. the consumer's maintenance), logs the summary
    ``… N more <what> (not logged one by one)``.  Thread-safe.
    """

    def __init__(
        self, logger: logging.Logger, what: str, *, burst: int = 10, window_s: float = 10.0
    ) -> None:
        self.logger = logger
        self.what = what
        self.burst = burst
        self.window_s = window_s
        self._lock = threading.Lock()
        self._start = float("-inf")
        self._used = 0
        self._suppressed = 0

    def allow(self) -> bool:
        """Whether one more line may be logged now (else it is counted for the summary)."""
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.window_s:
                summary, self._suppressed = self._suppressed, 0
                self._start, self._used = now, 0
            else:
                summary = 0
            if self._used < self.burst:
                self._used += 1
                allowed = True
            else:
                self._suppressed += 1
                allowed = False
        if summary:
            self._summary(summary)
        return allowed

    def flush(self, force: bool = False) -> None:
        """Log the summary of lines suppressed in a window that has ended (any, if
        ``force``)."""
        with self._lock:
            if not self._suppressed:
                return
            if not force and time.monotonic() - self._start < self.window_s:
                return
            summary, self._suppressed = self._suppressed, 0
        self._summary(summary)

    def _summary(self, n: int) -> None:
        self.logger.warning("… %d more %s (not logged one by one)", n, self.what,
                            extra={"count": n})
