"""Stream-id arithmetic (chi_redis.backend.streamids), checked against Redis's own order."""

from __future__ import annotations

import redis
from hypothesis import given
from hypothesis import strategies as st

from chi_redis.backend.streamids import MAX_SEQ, format_id, parse_id, pred, succ

IDS = st.tuples(st.integers(0, 2**48), st.integers(0, MAX_SEQ))


def test_stream_id_successor_and_predecessor() -> None:
    assert succ((5, 1)) == (5, 2)
    assert succ((5, MAX_SEQ)) == (6, 0)
    assert pred((5, 0)) == (4, MAX_SEQ)
    assert pred((5, 3)) == (5, 2)
    assert pred((0, 0)) == (0, 0)
    assert parse_id(b"17-3") == (17, 3)


def test_parse_accepts_text_bytes_and_a_bare_millisecond_part() -> None:
    assert parse_id("1714564800000-3") == parse_id(b"1714564800000-3") == (1714564800000, 3)
    assert parse_id("1714564800000") == parse_id(b"1714564800000") == (1714564800000, 0)
    assert parse_id(f"1-{MAX_SEQ}") == (1, MAX_SEQ)
    assert format_id((1714564800000, 3)) == "1714564800000-3"


@given(IDS)
def test_format_and_parse_round_trip_and_succ_pred_are_inverse(sid: tuple[int, int]) -> None:
    assert parse_id(format_id(sid)) == sid
    assert parse_id(format_id(sid).encode()) == sid
    assert pred(succ(sid)) == sid
    assert succ(sid) > sid
    if sid != (0, 0):
        assert succ(pred(sid)) == sid and pred(sid) < sid


def test_tuple_order_and_succ_are_the_order_redis_keeps(fake_client: redis.Redis) -> None:
    # Text order gets these wrong ("9-0" > "10-0"); the tuples must sort as XRANGE returns.
    ids = [(9, 0), (10, 0), (10, 2), (10, 11), (99, MAX_SEQ), (100, 0), (100, 1)]
    for sid in ids:  # XADD refuses an id not above the last: this also checks the order
        fake_client.xadd("s", {"f": "v"}, id=format_id(sid))
    got = [parse_id(sid) for sid, _ in fake_client.xrange("s")]
    assert got == sorted(ids) == ids
    # An inclusive start at succ(x) is exactly "after x", also across a full sequence.
    start = format_id(succ((99, MAX_SEQ)))
    after = [parse_id(sid) for sid, _ in fake_client.xrange("s", min=start)]
    assert after == [(100, 0), (100, 1)]
    before = [parse_id(sid) for sid, _ in fake_client.xrange("s", max=format_id(pred((100, 0))))]
    assert before[-1] == (99, MAX_SEQ) and len(before) == 5
