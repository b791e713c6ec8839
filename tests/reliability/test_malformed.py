"""F4: malformed entries written straight into a topic stream (raw XADD, bypassing the
publisher), interleaved with 50 valid events, in a real worker process.

Each malformed entry is dead-lettered with a specific reason after exactly one delivery,
acked; entries a newer producer could write (an extra entry field, an extra payload field,
a type no class is registered for) are handled, a type outside the subscription's filter is
skipped; every valid event is handled.  The worker is never restarted (same pids), logs no
CRITICAL line and never the raw body.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec
import pytest
from support.figures import record
from support.waiting import wait_until
from support.workercase import WorkerCase, worker_child

from chi_redis import Event, new_event_id
from chi_redis.events.codec import DEFAULT_MAX_EVENT_BYTES

pytestmark = pytest.mark.redis

CANARY = b"F4-CANARY-7f3a"
_mp = msgspec.msgpack.encode


def _entry(**fields: Any) -> dict[str, Any]:
    """A well-formed ``f4.order`` entry with ``fields`` replaced (None: left out)."""
    base: dict[str, Any] = {
        "id": new_event_id(), "type": "f4.order", "ts": str(int(time.time() * 1e6)),
        "ver": "1.0", "meta": "{}", "enc": "mp", "data": _mp({"n": 1, "name": "ok"}),
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


#: (what, entry fields, the dead letter's reason); reason None: accepted and handled.
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("random bytes", _entry(data=b"\xc1" + os.urandom(40) + CANARY), "decode"),
    ("non-UTF-8 in JSON data", _entry(enc="js", data=b'{"n": 1, "name": "\xff' + CANARY
                                      + b'"}'), "decode"),
    ("non-UTF-8 in JSON metadata", _entry(meta=b'{"k": "\xfe\xff"}'), "decode"),
    ("valid msgpack, wrong schema", _entry(data=_mp({"n": "one", "name": CANARY.decode()})),
     "schema"),
    ("payload missing a required field", _entry(data=_mp({"name": CANARY.decode()})),
     "schema"),
    ("entry missing a required field", _entry(id=None), "missing_field"),
    ("not an event type", _entry(type="f4.Not A Type"), "invalid_type"),
    ("non-UTF-8 type", _entry(type=b"f4.\xff"), "invalid_type"),
    ("unknown payload encoding", _entry(enc="zz"), "decode"),
    ("timestamp over 2**64", _entry(ts=str(2**64 + 1)), "decode"),
    ("NaN timestamp", _entry(ts="nan"), "decode"),
    ("inf timestamp", _entry(ts="inf"), "decode"),
    ("100000-deep msgpack array", _entry(type="f4.any", data=b"\x91" * 100_000 + b"\xc0"),
     "too_deep"),
    ("100000-deep JSON array", _entry(type="f4.any", enc="js", data=b"[" * 100_000),
     "too_deep"),
    ("100000-deep array for a registered type", _entry(data=b"\x91" * 100_000 + b"\xc0"),
     "too_deep"),  # refused by the depth check before the typed decode
    ("entry missing the payload field", _entry(data=None), "missing_field"),
    ("empty body", _entry(data=b""), "decode"),
    ("one byte over the size cap", _entry(data=b"\xc4" + CANARY * (
        DEFAULT_MAX_EVENT_BYTES // len(CANARY) + 1)), "too_large"),
    ("extra unknown entry field", _entry(**{"x-added-later": "1"}), None),
    ("extra unknown payload field", _entry(data=_mp({"n": 1, "name": "ok", "new": [1]})), None),
    ("type with no registered class", _entry(type="f4.added-later", data=_mp({"x": 1})), None),
]


def test_malformed_entries_are_dead_lettered_with_a_reason_and_valid_ones_handled(
    case: WorkerCase,
) -> None:
    worker = case.start(["f4"], threads=2)
    case.ready({"f4": ["f4"]}, worker)
    child = worker_child(worker)
    stream = case.keys.stream("f4")
    valid = [Event(type="f4.order", data={"n": i, "name": f"v{i}"}) for i in range(50)]
    bad: dict[str, tuple[str, str]] = {}  # stream id -> (what, reason)
    accepted = []
    chunks = [valid[i::len(CASES)] for i in range(len(CASES))]
    for (what, fields, reason), chunk in zip(CASES, chunks, strict=True):
        if chunk:
            case.publish(chunk, ["f4"])
        if reason is None:
            accepted.append(f"f4:{fields['id']}")
            case.history.invoke(accepted[-1])
        sid = case.client.xadd(stream, fields).decode()
        if reason is None:
            case.history.ok(accepted[-1])
        else:
            bad[sid] = (what, reason)
    # a well-formed type the subscription does not take: skipped, neither run nor dead letter
    case.client.xadd(stream, _entry(type="other.thing"))
    wait_until(lambda: case.dlq("f4") == len(bad), 60, "every malformed entry dead-lettered",
               interval=0.05)
    wait_until(lambda: case.history.committed_all_ok(), 60, "every valid event handled",
               interval=0.05)
    case.wait_drained({"f4": ["f4"]})

    letters = {dl.source_id: dl for dl in case.bus.dead_letters("f4")}
    assert set(letters) == set(bad)
    got = {what: letters[sid].reason for sid, (what, _) in bad.items()}
    assert got == {what: reason for _, (what, reason) in bad.items()}
    for dl in letters.values():
        assert (dl.deliveries, dl.attempts, dl.error_type) == (1, 1, "DecodeError"), dl
        assert dl.source_stream == stream and dl.body, dl
    starts = case.history.starts()
    assert not [k for k in starts if k.split(":", 1)[1] in {d.event_id for d in letters.values()}]
    log = worker.output()
    verdict = case.history.check()
    record("F4-malformed-entries", **verdict.figures(), malformed=len(bad),
           dead_letters_by_reason={r: sum(1 for d in letters.values() if d.reason == r)
                                   for r in sorted({d.reason for d in letters.values()})},
           accepted_forward_compatible=len(accepted), worker_restarts=worker.starts - 1,
           critical_log_lines=log.count("CRITICAL"))
    verdict.assert_nothing_lost(max_duplicated=0)
    assert worker.alive() and worker.starts == 1 and worker_child(worker) == child
    assert "CRITICAL" not in log and "unexpected error" not in log
    # the log names the dead letters, never the bodies that carry the canary
    assert log.count("dead-lettered") == len(bad)
    assert sum(CANARY in d.body for d in letters.values()) >= 4
    assert CANARY.decode() not in log and CANARY.hex() not in log
