"""The Dramatiq message encoder: msgspec MessagePack (never pickle).

Install it in every producer and worker process (``dramatiq.set_encoder(MsgpackEncoder())``;
``chi_redis.worker`` does).  The broker itself encodes and decodes with it directly, so
messages it writes never depend on which encoder happens to be global.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import msgspec

from ..events.nesting import check_depth

__all__ = ["MsgpackEncoder", "decode_message", "encode_message"]

_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(dict[str, Any])
_FIELDS = (
    "queue_name", "actor_name", "args", "kwargs", "options", "message_id", "message_timestamp",
)


def _default(obj: Any) -> Any:
    # Exception classes (``throws``) and other non-data values travel as their names.
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    raise TypeError(f"cannot encode {type(obj).__name__}")


_ENC_SAFE = msgspec.msgpack.Encoder(enc_hook=_default)


class MsgpackEncoder(dramatiq.Encoder):
    """Encodes Dramatiq message dicts with msgspec MessagePack."""

    def encode(self, data: dict[str, Any]) -> bytes:
        return _ENC_SAFE.encode(data)

    def decode(self, data: bytes) -> dict[str, Any]:
        try:
            check_depth(b"mp", data)
            return _DEC.decode(data)
        except RecursionError:
            raise dramatiq.DecodeError(  # type: ignore[no-untyped-call]
                "message nested too deeply", data, None
            ) from None
        except msgspec.DecodeError as exc:
            raise dramatiq.DecodeError(str(exc), data, exc) from None  # type: ignore[no-untyped-call]


def encode_message(message: Any) -> bytes:
    """Encode a Message (or MessageProxy) for a queue stream or the delayed set."""
    return _ENC_SAFE.encode({f: getattr(message, f) for f in _FIELDS})


def decode_message(data: bytes) -> dramatiq.Message[Any]:
    """Decode bytes written by :func:`encode_message`; raises ValueError when malformed."""
    try:
        check_depth(b"mp", data)
        fields = _DEC.decode(data)
        fields["args"] = tuple(fields["args"])
        return dramatiq.Message(**{f: fields[f] for f in _FIELDS if f in fields})
    except RecursionError:
        raise ValueError("message nested too deeply") from None
    except (msgspec.DecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed message: {exc}") from None
