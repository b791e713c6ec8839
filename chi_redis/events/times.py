"""Event times as the stream keeps them (integer microseconds since the Unix epoch, UTC)
and as people read them (ISO 8601 with microseconds and a ``Z``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["iso_us", "iso_us_raw", "us_to_datetime"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us_to_datetime(us: int) -> datetime:
    """Microseconds since the epoch → aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=us)


_ISO_SECONDS: dict[int, str] = {}


def iso_us(us: int) -> str:
    """µs since the epoch → ISO 8601 UTC with microseconds and a ``Z``."""
    sec, frac = divmod(us, 1_000_000)
    prefix = _ISO_SECONDS.get(sec)
    if prefix is None:  # events come in bursts: one strftime per second of them
        if len(_ISO_SECONDS) > 4096:
            _ISO_SECONDS.clear()
        prefix = _ISO_SECONDS[sec] = (_EPOCH + timedelta(seconds=sec)).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
    return f"{prefix}.{frac:06d}Z"


_ISO_BY_RAW_SECONDS: dict[bytes, str] = {}


def iso_us_raw(raw: bytes) -> str:
    """:func:`iso_us` of µs given as the decimal bytes an entry's ``ts`` holds.

    Cut at the seconds rather than parsed (a replay prints one per event): the same
    string :func:`iso_us` gives, for any value ``int`` accepts.
    """
    if len(raw) <= 6 or not raw.isdigit():
        return iso_us(int(raw))
    sec = raw[:-6]
    prefix = _ISO_BY_RAW_SECONDS.get(sec)
    if prefix is None:
        if len(_ISO_BY_RAW_SECONDS) > 4096:
            _ISO_BY_RAW_SECONDS.clear()
        prefix = _ISO_BY_RAW_SECONDS[sec] = iso_us(int(sec) * 1_000_000)[:-8]
    return prefix + "." + raw[-6:].decode() + "Z"
