"""A nesting-depth check run on payloads before msgspec decodes them.

msgspec decodes nested arrays and maps by recursing in C, one stack frame per level, and
stops at Python's recursion limit (a ``RecursionError``).  On a thread with a small stack
(``threading.stack_size(256 * 1024)``: some hosts and embedders run workers so) the C stack
runs out first, near 800 levels of MessagePack or 400 of JSON, and the process dies with a
segmentation fault.  A stream entry is input anyone with write access to Redis controls, so
every payload is checked here first: more than :data:`MAX_DEPTH` levels is refused with a
``msgspec.DecodeError`` (the codec turns it into a :class:`~chi_redis.DecodeError`).

The check costs nothing for payloads of up to :data:`MAX_DEPTH` bytes (they cannot be
deeper); for larger ones a count of the bytes that may open a container bounds the depth
(one C pass); only when that bound is over the limit is the payload walked, without
recursion, to find its real depth.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

__all__ = [
    "MAX_DEPTH", "DepthChecked", "TooDeepError", "check_depth", "json_depth_ok",
    "msgpack_depth_ok",
]

#: Arrays and maps nested deeper than this are refused, in either encoding.
MAX_DEPTH = 256

# MessagePack headers: fixmap 0x80-0x8f, fixarray 0x90-0x9f, array16/32 0xdc/0xdd,
# map16/32 0xde/0xdf (https://github.com/msgpack/msgpack/blob/master/spec.md).
_CONTAINER = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_NOT_CONTAINER = bytes(b for b in range(256) if b not in _CONTAINER)
# Bytes after the header byte (and the length they hold, if any) of fixed-size scalars.
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
          0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
# Header byte -> (bytes of the length that follows, extra bytes after it): str, bin, ext.
_SIZED = {0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0), 0xC4: (1, 0), 0xC5: (2, 0),
          0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1)}
# Header byte -> (bytes of the item count that follows, objects per item).
_COUNTED = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
# JSON: a whole string (skipped, escapes included), a lone quote (unterminated), a bracket.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|"|[\[\]{}]', re.S)


class TooDeepError(msgspec.DecodeError):
    """A payload nested deeper than the limit (its dead letter's reason is ``too_deep``)."""


def _too_deep(limit: int) -> msgspec.DecodeError:
    return TooDeepError(f"payload nested too deeply (more than {limit} levels)")


def msgpack_depth_ok(raw: bytes, limit: int = MAX_DEPTH) -> None:
    """Raise ``msgspec.DecodeError`` if the first MessagePack object of ``raw`` nests arrays
    and maps more than ``limit`` deep, or is cut short, or declares more items or bytes than ``raw``
    holds; return None otherwise.  Iterative: no recursion whatever the input."""
    pos, end = 0, len(raw)
    left = 1  # objects still to read at the current level
    stack: list[int] = []  # ``left`` of the enclosing levels
    while True:
        while left == 0:
            if not stack:
                return
            left = stack.pop()
        if pos >= end:
            raise msgspec.DecodeError("truncated payload")
        b = raw[pos]
        pos += 1
        left -= 1
        if b < 0x80 or b >= 0xE0:  # fixint
            continue
        if 0xA0 <= b < 0xC0:  # fixstr
            pos += b & 0x1F
            continue
        if b < 0xA0:  # fixmap, fixarray
            count = (b & 0x0F) * (2 if b < 0x90 else 1)
        elif b in _FIXED:
            pos += _FIXED[b]
            continue
        elif b in _SIZED:
            width, extra = _SIZED[b]
            pos += width + extra + int.from_bytes(raw[pos:pos + width], "big")
            continue
        elif b in _COUNTED:
            width, per = _COUNTED[b]
            count = int.from_bytes(raw[pos:pos + width], "big") * per
            pos += width
        else:  # 0xC1: never used
            raise msgspec.DecodeError(f"invalid MessagePack byte 0x{b:02x}")
        if count:
            if count > end - pos:  # every object takes at least one byte
                raise msgspec.DecodeError(
                    f"payload declares {count} items in {end - pos} bytes")
            stack.append(left)
            if len(stack) > limit:
                raise _too_deep(limit)
            left = count


def json_depth_ok(raw: bytes, limit: int = MAX_DEPTH) -> None:
    """Raise ``msgspec.DecodeError`` if JSON ``raw`` nests arrays and objects more than
    ``limit`` deep (brackets inside strings do not count) or holds an unterminated string."""
    depth = 0
    for m in _JSON_TOKEN.finditer(raw):
        c = m.group()
        if c in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise _too_deep(limit)
        elif c in (b"]", b"}"):
            depth -= 1
        elif c == b'"':
            raise msgspec.DecodeError("unterminated string")


def check_depth(tag: bytes, raw: bytes, limit: int = MAX_DEPTH) -> None:
    """Raise ``msgspec.DecodeError`` if payload ``raw`` (encoding ``tag``: ``mp`` or ``js``)
    nests more than ``limit`` levels deep; cheap for every payload that is not close."""
    if len(raw) <= limit:
        return
    if tag == b"js":
        if raw.count(b"[") + raw.count(b"{") > limit:
            json_depth_ok(raw, limit)
    elif tag == b"mp" and len(raw.translate(None, _NOT_CONTAINER)) > limit:
        msgpack_depth_ok(raw, limit)


class DepthChecked:
    """A msgspec decoder whose :meth:`decode` checks the nesting first (:func:`check_depth`).

    The codec hands these out as its payload decoders, so every path that decodes entries
    (one by one, batch members, whole query pages) gets the check without repeating it.
    """

    __slots__ = ("_decode", "limit", "tag")

    def __init__(self, decoder: Any, tag: bytes, limit: int = MAX_DEPTH) -> None:
        self._decode = decoder.decode
        self.tag = tag
        self.limit = limit

    def decode(self, raw: bytes) -> Any:
        if len(raw) > self.limit:
            check_depth(self.tag, raw, self.limit)
        return self._decode(raw)

    def decoder_for(self, longest: int) -> Any:
        """The decode function for payloads no longer than ``longest`` bytes: msgspec's own
        (a C call, no check) when none can hold more than ``limit`` levels."""
        return self._decode if longest <= self.limit else self.decode
