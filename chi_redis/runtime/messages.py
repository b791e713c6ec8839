"""The messages a consumer hands to Dramatiq's Worker, and the shape check of the queue
messages it reads from a private stream.

:class:`StreamMessage` is the proxy of one stream entry; :func:`topic_message` builds the
message of a topic entry.  Both save per-message work the Worker would otherwise repeat: the
proxy carries the message's fields itself (Dramatiq's proxy forwards each read through a
Python ``__getattr__`` call, and the Worker and its middleware read a dozen per message), and
a topic message is built without the frozen dataclass's ``__init__`` (one
``object.__setattr__`` per field).

A message in a private stream was written by anyone with access to Redis; Dramatiq's
middleware and the subscription runner assume the types checked here, and a message that
breaks them would fail on every attempt (or crash the middleware), so the consumer
dead-letters it at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import dramatiq

from ..errors import DecodeError
from .encoder import decode_message

__all__ = [
    "StreamMessage", "as_stream_message", "malformed", "malformed_batch", "private_message",
    "topic_message",
]

_FIELDS = ("queue_name", "actor_name", "args", "kwargs", "options", "message_id",
           "message_timestamp")
#: Whether Dramatiq's Message is still the plain dataclass of these fields (checked once):
#: if a release changes it, messages are built by its constructor again.
_PLAIN = tuple(f.name for f in dataclasses.fields(dramatiq.Message)) == _FIELDS and all(
    f.init and not f.name.startswith("_") for f in dataclasses.fields(dramatiq.Message)
)
_new = object.__new__
_set = object.__setattr__


def topic_message(
    queue: str, args: tuple[Any, ...], message_id: str, timestamp: int
) -> dramatiq.Message[Any]:
    """``dramatiq.Message(queue, queue, args, {}, {}, message_id, timestamp)``, equal to it
    field for field, built at a third of the cost (``args`` must be a tuple)."""
    if not _PLAIN:
        return dramatiq.Message(
            queue_name=queue, actor_name=queue, args=args, kwargs={}, options={},
            message_id=message_id, message_timestamp=timestamp,
        )
    message: dramatiq.Message[Any] = _new(dramatiq.Message)
    _set(message, "__dict__", {
        "queue_name": queue, "actor_name": queue, "args": args, "kwargs": {}, "options": {},
        "message_id": message_id, "message_timestamp": timestamp,
    })
    return message


class StreamMessage(dramatiq.MessageProxy):
    """A message proxy that knows the stream entry to ack; prints no payload.

    The message's fields are set on the proxy itself (the message is frozen, ``options`` is
    the same dict), so reading them costs no ``__getattr__`` call.
    """

    def __init__(
        self, message: dramatiq.Message[Any], queue: str, stream: str, entry_id: bytes,
        deliveries: int,
    ) -> None:
        super().__init__(message)
        self.queue_name = message.queue_name
        self.actor_name = message.actor_name
        self.args = message.args
        self.kwargs = message.kwargs
        self.options = message.options
        self.message_id = message.message_id
        self.message_timestamp = message.message_timestamp
        self.entry_queue = queue
        self.entry_stream = stream
        self.entry_id = entry_id
        self.deliveries = deliveries
        # Set when a retry copy of this message could not be written: the entry is then
        # left pending (not acked) so that the lease expires and it is reclaimed.
        self.keep_pending = False
        # Set when a retry of a partition's entry holds its partition: the backoff (ms)
        # after which the consumer hands the entry out again (runtime/partitioned.py).
        self.hold_ms: int | None = None
        # The topic entry's fields as read (bytes keys), so the runner need not rebuild them.
        self.entry_fields: dict[bytes, bytes] | None = None

    def __str__(self) -> str:
        return f"{self.actor_name}({self.message_id})"


def as_stream_message(message: dramatiq.MessageProxy) -> StreamMessage:
    """``message`` as the StreamMessage this broker made (Dramatiq hands it back to us)."""
    if not isinstance(message, StreamMessage):
        raise TypeError(f"not a message of a StreamsBroker: {type(message).__name__}")
    return message

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


def private_message(
    fields: dict[bytes, bytes], sid: bytes, queue: str, private: str,
    check: Callable[[dramatiq.Message[Any]], str | None],
) -> dramatiq.Message[Any]:
    """The message of entry ``sid`` of ``queue``'s private stream, for that queue; raises
    :class:`DecodeError` unless it decodes and ``check`` (:func:`malformed` or
    :func:`malformed_batch`) finds nothing wrong."""
    try:
        message = decode_message(fields[b"m"])
    except (KeyError, ValueError) as exc:
        raise DecodeError(str(exc), stream=private, entry_id=sid.decode()) from None
    problem = check(message)
    if problem:
        raise DecodeError(problem, stream=private, entry_id=sid.decode())
    return message if message.queue_name == queue else message.copy(queue_name=queue)
