"""Stream entry ⇄ :class:`Event`.

A topic stream entry keeps the envelope's fields separate, so ``redis-cli XRANGE`` shows the
routing fields in clear and filters need no payload decode:

=========  ==========================================================================
field      value
=========  ==========================================================================
``id``     event id (UUIDv7 text)
``type``   event type, e.g. ``user.created``
``ts``     event time, integer microseconds since the Unix epoch (UTC)
``ver``    schema version
``meta``   metadata as JSON (``{}`` when empty)
``enc``    payload encoding: ``mp`` (msgspec MessagePack) or ``js`` (JSON)
``data``   the payload
=========  ==========================================================================

Archive writes (``EventStore.store``) carry one more field, ``arc`` = ``1``: they are part
of the log but are not delivered to subscriptions.

The same entry has a second, tool-facing shape: :meth:`Codec.envelope` turns it into the
JSON envelope the CLI prints and replay's print target writes (docs/design.md §9.6).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec

from ..errors import DecodeError, PayloadTooLargeError, ValidationError
from ..limits import MAX_EVENT_BYTES, check_limit
from .event import Event, MetaValue, _to_us, registered_type
from .flatdecode import decode_columns
from .names import _VALID as _VALID_NAMES
from .names import validate_name
from .nesting import MAX_DEPTH, DepthChecked, TooDeepError, check_depth
from .times import iso_us, iso_us_raw, us_to_datetime

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES", "Codec", "Encoding", "Envelope", "iso_us", "iso_us_raw",
    "us_to_datetime",
]

Encoding = Literal["msgpack", "json"]
DEFAULT_MAX_EVENT_BYTES = 1 << 20
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENC_TAG = {"msgpack": b"mp", "json": b"js"}
_META_DECODER = msgspec.json.Decoder(dict[str, MetaValue])
# The envelope shows whatever metadata a (possibly foreign) producer wrote: no value types.
_ANY_META_DECODER = msgspec.json.Decoder(dict[str, Any])
_EMPTY_META = b"{}"
_NO_META: dict[str, Any] = {}

Fields = dict[bytes, bytes]
_TEMPLATE = Event(type="template", id="template", timestamp=_EPOCH)
_LAYOUT = [b"id", b"type", b"ts", b"ver", b"meta", b"enc", b"data"]
#: Batches at least this long are decoded column by column (a fixed cost per batch).
_COLUMNS_FROM = 16
_new_event: Callable[[], Event] = _TEMPLATE.__copy__  # type: ignore[attr-defined]  # no __post_init__


def _b(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()


class Envelope(msgspec.Struct, omit_defaults=True):
    """The JSON envelope of an event (docs/design.md §9.6), plus its stream id."""

    id: str
    type: str
    topic: str
    data: Any
    metadata: Any
    timestamp: str
    version: str
    stream_id: str
    archived: bool = False


class Codec:
    """Encodes events into stream-entry fields and decodes them back.

    Thread-safe: msgspec encoders and decoders hold no per-call state.
    """

    def __init__(
        self, encoding: Encoding = "msgpack", max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> None:
        if encoding not in _ENC_TAG:
            raise ValidationError(f"unknown encoding {encoding!r}", field="encoding")
        check_limit(max_event_bytes, "max_event_bytes", 1, MAX_EVENT_BYTES)
        self.encoding = encoding
        self.enc_tag = _ENC_TAG[encoding]
        self.max_event_bytes = max_event_bytes
        self._encode = (
            msgspec.msgpack.Encoder().encode
            if encoding == "msgpack"
            else msgspec.json.Encoder().encode
        )
        json_encoder = msgspec.json.Encoder()
        self._json = json_encoder.encode
        self._json_lines = json_encoder.encode_lines
        # Payload decoders check the nesting before msgspec recurses (.nesting).
        self._untyped_mp = DepthChecked(msgspec.msgpack.Decoder(), b"mp")
        self._untyped_js = DepthChecked(msgspec.json.Decoder(), b"js")
        self._typed: dict[tuple[bytes, type[Any]], Any] = {}
        self._meta_cache: dict[bytes, dict[str, MetaValue]] = {}
        self._type_names: dict[bytes, str] = {}  # raw type -> checked name (bounded)

    # encoding -----------------------------------------------------------------------
    def encode_parts(self, event: Event) -> tuple[str, str, int, str, bytes, bytes]:
        """``(id, type, ts, ver, meta, data)`` of an entry, checked against the size cap.

        The hot path of publishing: redis-py turns the str and int values into bytes in C.
        Raises :class:`PayloadTooLargeError` when the encoded event is over the cap.
        """
        try:
            data = self._encode(event.data)
            # What consumers would refuse (:mod:`.nesting`) is not published.
            if len(data) > MAX_DEPTH:
                check_depth(self.enc_tag, data)
        except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
            raise ValidationError(f"event data cannot be encoded: {exc}", field="data") from None
        metadata = event.metadata
        if metadata:
            try:
                meta = self._json(metadata)
            except (TypeError, ValueError, OverflowError, RecursionError,
                    msgspec.EncodeError) as exc:
                raise ValidationError(
                    f"metadata cannot be encoded: {exc}", field="metadata"
                ) from None
        else:
            meta = _EMPTY_META
        id_, type_, version = event.id, event.type, event.version
        # Checked when the Event was built, but its fields can be reassigned since: the
        # names become Redis keys (a set lookup each when valid, docs/design.md §4.2).
        if type_ not in _VALID_NAMES or event.topic not in _VALID_NAMES:
            validate_name(type_, "type")
            validate_name(event.topic, "topic")
        size = len(data) + len(meta) + len(id_) + len(type_) + len(version) + 32
        if size > self.max_event_bytes or not (id_.isascii() and version.isascii()):
            size += len(id_.encode()) - len(id_) + len(version.encode()) - len(version)
            if size > self.max_event_bytes:
                raise PayloadTooLargeError(size, self.max_event_bytes, topic=event.topic)
        return id_, type_, _to_us(event.timestamp), version, meta, data

    def encode(self, event: Event) -> list[bytes]:
        """The entry values in field order ``id type ts ver meta enc data``.

        Raises :class:`PayloadTooLargeError` when the encoded event is over the cap.
        """
        id_, type_, ts, version, meta, data = self.encode_parts(event)
        return [id_.encode(), type_.encode(), str(ts).encode(), version.encode(), meta,
                self.enc_tag, data]

    # decoding -----------------------------------------------------------------------
    def _decoder(self, tag: bytes, cls: type[Any]) -> Any:
        key = (tag, cls)
        dec = self._typed.get(key)
        if dec is None:
            mod = msgspec.msgpack if tag == b"mp" else msgspec.json
            dec = self._typed[key] = DepthChecked(mod.Decoder(cls), tag)
        return dec

    def decode_data(self, tag: bytes, raw: bytes, event_type: str) -> Any:
        """Decode a payload: to the registered class of ``event_type`` if any.

        Raises ``msgspec.DecodeError`` for a payload nested too deeply (:mod:`.nesting`)."""
        cls = registered_type(event_type)
        if cls is not None:
            return self._decoder(tag, cls).decode(raw)
        return self.decode_untyped(tag, raw)

    def decode_untyped(self, tag: bytes, raw: bytes) -> Any:
        """Decode a payload to plain Python values (dicts, lists, str, numbers)."""
        if tag == b"mp":
            return self._untyped_mp.decode(raw)
        if tag == b"js":
            return self._untyped_js.decode(raw)
        raise ValueError(f"unknown payload encoding {tag!r}")

    def _metadata(self, raw: bytes) -> dict[str, MetaValue]:
        # Producers repeat the same few metadata blobs: decode each once (bounded cache),
        # hand every event its own copy.
        if raw == _EMPTY_META:
            return {}
        cached = self._meta_cache.get(raw)
        if cached is None:
            cached = _META_DECODER.decode(raw)
            if len(self._meta_cache) >= 1024:
                self._meta_cache.clear()
            self._meta_cache[raw] = cached
        return dict(cached)

    def decode(self, fields: Fields, *, topic: str, stream: str = "", entry_id: str = "") -> Event:
        """Decode an entry's fields into an :class:`Event`.

        Anything wrong (missing field, bad value, corrupt payload, nesting too deep, over the
        size cap) raises :class:`DecodeError` naming the stream and entry id.
        """
        try:
            return self._build(
                fields[b"id"],
                fields[b"type"],
                fields[b"ts"],
                fields.get(b"ver", b"1.0"),
                fields.get(b"meta", _EMPTY_META),
                fields.get(b"enc", b"mp"),
                fields[b"data"],
                topic,
            )
        except KeyError as exc:
            name = exc.args[0].decode() if isinstance(exc.args[0], bytes) else exc.args[0]
            raise DecodeError(
                f"missing field {name!r}", stream=stream, entry_id=entry_id, kind="missing_field"
            ) from None
        except RecursionError:
            raise DecodeError(
                "payload nested too deeply", stream=stream, entry_id=entry_id, kind="too_deep"
            ) from None
        except (msgspec.DecodeError, ValueError, TypeError, OverflowError, AttributeError) as exc:
            # UnicodeDecodeError and msgspec.ValidationError are subclasses of these;
            # AttributeError: field values that are not bytes.
            raise DecodeError(str(exc), stream=stream, entry_id=entry_id,
                              kind=_kind(exc)) from None

    def decode_flat(
        self, flat: list[bytes], *, topic: str, stream: str = "", entry_id: str = ""
    ) -> Event:
        """Decode an entry given as the flat ``[field, value, ...]`` list Redis returns.

        Entries in the layout the publish script writes are read by position, without
        building a dict; any other layout goes through :meth:`decode`.
        """
        if len(flat) >= 14 and flat[0:13:2] == _LAYOUT:
            try:
                return self._build(
                    flat[1], flat[3], flat[5], flat[7], flat[9], flat[11], flat[13], topic
                )
            except Exception:  # let decode() classify the error
                pass
        it = iter(flat)
        try:
            fields = dict(zip(it, it, strict=True))
        except (TypeError, ValueError):
            raise DecodeError(
                "entry is not a list of field/value pairs", stream=stream, entry_id=entry_id
            ) from None
        return self.decode(fields, topic=topic, stream=stream, entry_id=entry_id)

    def decode_flat_many(
        self, entries: Iterable[tuple[bytes, list[bytes]]], *, topic: str, stream: str = ""
    ) -> list[Event]:
        """:meth:`decode_flat` of many ``(stream id, flat)`` entries of one topic, which is
        checked once; any entry not in the publish layout, or failing, goes through
        :meth:`decode_flat` (same events, same errors).

        Many entries go column by column first (:mod:`.flatdecode`, much less Python per
        event), and entry by entry only if that cannot take them all as they are."""
        try:
            checked = validate_name(topic, "topic")
        except ValueError:  # each entry's own DecodeError, as decode_flat() reports it
            checked, layout = topic, None
        else:
            layout = _LAYOUT
            entries = entries if isinstance(entries, list) else list(entries)
            if len(entries) >= _COLUMNS_FROM:
                try:
                    return decode_columns(self, [flat for _, flat in entries], checked)
                except Exception:  # the loop below decodes each or reports its error
                    pass
        build = self._build
        out: list[Event] = []
        append = out.append
        for sid, flat in entries:
            if len(flat) >= 14 and flat[0:13:2] == layout:
                try:
                    append(build(
                        flat[1], flat[3], flat[5], flat[7], flat[9], flat[11], flat[13], checked,
                        topic_checked=True,
                    ))
                    continue
                except Exception:  # let decode_flat() classify the error
                    pass
            append(self.decode_flat(flat, topic=topic, stream=stream, entry_id=sid.decode()))
        return out

    def _type_name(self, raw: bytes) -> str:
        name = self._type_names.get(raw)
        if name is None:
            try:
                name = validate_name(raw.decode(), "type")
            except ValueError as exc:  # UnicodeDecodeError too
                raise _Invalid("invalid_type", str(exc)) from None
            if len(self._type_names) >= 1024:
                self._type_names.clear()
            self._type_names[raw] = name
        return name

    def _build(
        self,
        raw_id: bytes,
        raw_type: bytes,
        raw_ts: bytes,
        raw_ver: bytes,
        meta: bytes,
        enc: bytes,
        data: bytes,
        topic: str,
        topic_checked: bool = False,
    ) -> Event:
        if len(data) > self.max_event_bytes:
            raise _Invalid("too_large", f"payload of {len(data)} bytes is over the size cap")
        type_ = self._type_names.get(raw_type) or self._type_name(raw_type)
        event_id = raw_id.decode()
        if not 0 < len(event_id) <= 128 or not event_id.isprintable():
            raise ValueError(f"invalid event id {event_id[:60]!r}")
        version = raw_ver.decode()
        if not version:
            raise ValueError("empty version")
        # Built from a template rather than through Event(): every field is checked here
        # or is valid by construction (aware UTC time, typed metadata decoder; msgspec
        # refuses non-finite JSON numbers), and skipping __post_init__ makes queries that
        # return many events much faster.
        event = _new_event()
        event.id = event_id
        event.type = type_
        event.topic = topic if topic_checked else validate_name(topic, "topic")
        event.timestamp = _EPOCH + timedelta(0, 0, int(raw_ts))
        event.version = version
        event.metadata = self._metadata(meta)
        event.data = self.decode_data(enc, data, type_)
        return event

    # the JSON envelope ------------------------------------------------------------------
    def _envelope(
        self, topic: str, sid: bytes, f: Mapping[str, bytes]
    ) -> Envelope | dict[str, Any]:
        try:
            raw = f["data"]
            if len(raw) > self.max_event_bytes:
                raise ValueError(f"payload of {len(raw)} bytes is over the size cap")
            data = self.decode_untyped(f.get("enc", b"mp"), raw)
            meta_raw = f.get("meta", _EMPTY_META)
            check_depth(b"js", meta_raw)
            return Envelope(
                f["id"].decode(), f["type"].decode(), topic, data,
                _ANY_META_DECODER.decode(meta_raw) if meta_raw != _EMPTY_META else _NO_META,
                iso_us_raw(f["ts"]), f.get("ver", b"1.0").decode(), sid.decode(), "arc" in f,
            )
        except (KeyError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            if isinstance(exc, KeyError):
                name = exc.args[0]
                reason = f"missing field {name.decode() if isinstance(name, bytes) else name!r}"
            else:
                reason = str(exc)
            err = DecodeError(reason, stream=topic, entry_id=sid.decode())
            return {"stream_id": sid.decode(), "topic": topic, "error": str(err)}

    def envelope(self, topic: str, sid: bytes, fields: Mapping[str, bytes]) -> dict[str, Any]:
        """The JSON envelope of an entry as a dict: the event plus its stream id.

        ``fields`` has str names (as :func:`chi_redis.store.history.str_fields` gives them).
        Payloads are decoded without a registered class (tools know none).  An entry that
        cannot be decoded gives ``{"stream_id", "topic", "error"}`` instead of stopping a scan.
        """
        env = self._envelope(topic, sid, fields)
        if isinstance(env, dict):
            return env
        out = msgspec.structs.asdict(env)
        if not env.archived:
            del out["archived"]
        return out

    def envelope_json(self, topic: str, sid: bytes, fields: Mapping[str, bytes]) -> bytes:
        """:meth:`envelope` encoded as one compact JSON object (the fast path)."""
        return self._json(self._envelope(topic, sid, fields))

    def envelope_lines(self, items: Iterable[tuple[str, bytes, Mapping[str, bytes], Any]]) -> bytes:
        """:meth:`envelope_json` of each ``(topic, stream id, fields, …)``, one line each
        (every line ends with a newline), encoded in one call."""
        env = self._envelope  # a partition's name (``orders/3``) prints as its topic
        return self._json_lines([env(it[0].split("/", 1)[0], it[1], it[2]) for it in items])


class _Invalid(ValueError):
    """A value :meth:`Codec.decode` refuses, with the :class:`DecodeError` kind it gives."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _kind(exc: BaseException) -> str:
    """The :class:`DecodeError` kind of an error decoding an entry's fields."""
    if isinstance(exc, _Invalid):
        return exc.kind
    if isinstance(exc, TooDeepError):
        return "too_deep"
    if isinstance(exc, msgspec.ValidationError):
        return "schema"  # well-formed, but not what the registered type (or metadata) holds
    return "decode"


def entry_fields(values: list[bytes], archive: bool = False) -> Fields:
    """The field mapping for ``values`` as returned by :meth:`Codec.encode`."""
    names = (b"id", b"type", b"ts", b"ver", b"meta", b"enc", b"data")
    fields = dict(zip(names, values, strict=True))
    if archive:
        fields[b"arc"] = b"1"
    return fields
