"""TIME, DUR and RATE arguments (no Redis needed); stream ids: see test_streamids.py."""

from __future__ import annotations

import pytest

from chi_redis.backend.streamids import MAX_SEQ
from chi_redis.errors import ValidationError
from chi_redis.ops.timeparse import TimePoint, parse_duration, parse_rate, parse_time

NOW_US = 1_700_000_000_000_000


def test_iso_time_with_zone_is_parsed_to_utc_microseconds() -> None:
    p = parse_time("2023-11-14T22:13:20.000001+00:00")
    assert p == TimePoint(NOW_US + 1)
    assert parse_time("2023-11-14T23:13:20+01:00").us == NOW_US
    assert parse_time("2023-11-14T22:13:20Z").us == NOW_US


def test_naive_iso_time_means_utc() -> None:
    assert parse_time("2023-11-14T22:13:20").us == NOW_US
    assert parse_time("2023-11-14").us == NOW_US - (22 * 3600 + 13 * 60 + 20) * 1_000_000


def test_relative_age_counts_back_from_now() -> None:
    assert parse_time("-15m", now_us=NOW_US).us == NOW_US - 15 * 60 * 1_000_000
    assert parse_time("-2h", now_us=NOW_US).us == NOW_US - 2 * 3600 * 1_000_000
    assert parse_time("-7d", now_us=NOW_US).us == NOW_US - 7 * 86400 * 1_000_000
    assert parse_time("now", now_us=NOW_US).us == NOW_US


def test_stream_id_keeps_its_exact_sequence() -> None:
    p = parse_time("1700000000000-5")
    assert p.sid == (1_700_000_000_000, 5)
    assert p.lower_id() == p.upper_id() == (1_700_000_000_000, 5)
    assert parse_time("1700000000000").sid == (1_700_000_000_000, 0)


def test_time_bounds_cover_the_whole_millisecond() -> None:
    p = parse_time("2023-11-14T22:13:20Z")
    assert p.lower_id() == (1_700_000_000_000, 0)
    assert p.upper_id() == (1_700_000_000_000, MAX_SEQ)
    # A sub-millisecond start excludes the entries of its own millisecond.
    assert parse_time("2023-11-14T22:13:20.0005Z").lower_id() == (1_700_000_000_001, 0)
    sid = parse_time("1700000000000-3")
    assert (sid.lower_us(), sid.upper_us()) == (NOW_US, NOW_US + 999)


@pytest.mark.parametrize("bad", ["", "yesterday", "-15x", "2023-13-01", "12-ab", "1-2-3"])
def test_bad_time_is_a_validation_error(bad: str) -> None:
    with pytest.raises(ValidationError, match="invalid"):
        parse_time(bad)


def test_durations_and_rates() -> None:
    assert parse_duration("15m") == 900_000
    assert parse_duration("7d") == 7 * 86_400_000
    assert parse_rate("500") == 500.0
    assert parse_rate("500/s") == 500.0
    assert parse_rate("6000/m") == 100.0
    for bad in ("0", "x/s", "-1", "5/fortnight"):
        with pytest.raises(ValidationError):
            parse_rate(bad)
    for bad in ("soon", "0s"):
        with pytest.raises(ValidationError):
            parse_duration(bad)
