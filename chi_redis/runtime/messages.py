"""The shape check of the queue messages a consumer reads from a private stream.

A message there was written by anyone with access to Redis; Dramatiq's middleware and the
subscription runner assume the types checked here, and a message that breaks them would
fail on every attempt (or crash the middleware), so the consumer dead-letters it at once.
"""

from __future__ import annotations

from typing import Any

import dramatiq

__all__ = ["malformed", "malformed_batch"]

#: Options Dramatiq's middleware computes with: a message must carry them as integers.
_INT_OPTIONS = ("retries", "max_retries", "min_backoff", "max_backoff", "time_limit", "max_age")


def malformed(message: dramatiq.Message[Any], sub: str | None) -> str | None:
    """What is wrong with a decoded queue message, if anything: Dramatiq and the runner
    assume these types, and a message that breaks them would fail on every attempt."""
    if not isinstance(message.actor_name, str) or not isinstance(message.message_id, str):
        return "actor name and message id must be strings"
    if not isinstance(message.kwargs, dict) or not isinstance(message.options, dict):
        return "kwargs and options must be maps"
    for name in _INT_OPTIONS:
        value = message.options.get(name)
        if value is not None and not isinstance(value, int):
            return f"option {name!r} must be an integer"
    if message.actor_name == sub:
        args = message.args
        if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], dict):
            return "a subscription's message takes (topic, fields)"
        if message.kwargs or not all(
            isinstance(k, str) and isinstance(v, bytes) for k, v in args[1].items()
        ):
            return "a subscription's fields map names to bytes, with no keyword arguments"
    return None


def malformed_batch(message: dramatiq.Message[Any], sub: str) -> str | None:
    """:func:`malformed` for the queue of a batch subscription, whose own messages take
    either ``(topic, fields)`` (one event: a redrive, a targeted replay) or ``(members,)``,
    each member ``[topic, fields, source stream, source entry id]`` (docs/design.md §5.10)."""
    args = message.args
    if message.actor_name != sub or len(args) != 1:
        return malformed(message, sub)
    problem = malformed(message, None)
    if problem:
        return problem
    members = args[0]
    if not isinstance(members, list | tuple) or not members:
        return "a batch message takes a non-empty list of members"
    for m in members:
        if not (
            isinstance(m, list | tuple) and len(m) == 4 and isinstance(m[0], str)
            and isinstance(m[1], dict) and isinstance(m[2], str) and isinstance(m[3], str)
            and all(isinstance(k, bytes | str) and isinstance(v, bytes) for k, v in m[1].items())
        ):
            return "a batch member is [topic, fields, source stream, source entry id]"
    if message.kwargs:
        return "a batch message takes no keyword arguments"
    return None
