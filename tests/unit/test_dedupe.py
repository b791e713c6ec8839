"""Dedupe claims (chi_redis.runtime.dedupe): of two copies of an event at the same instant
only one runs; a failed run hands the event to the copy waiting; a run that died frees it
after one lease; refresh keeps a live run's claim and touches no one else's."""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest

from chi_redis.runtime.broker import QueueState
from chi_redis.runtime.dedupe import Dedupe, refresh_claims

LEASE_MS = 300


@pytest.fixture
def dedupe(fake_client: fakeredis.FakeRedis) -> Dedupe:
    return Dedupe(fake_client, QueueState(), LEASE_MS, ttl_ms=60_000)


def _copies(dedupe: Dedupe, n: int, run: float, fail: bool = False) -> list[str]:
    """``n`` copies of one event at once; what each did (``ran``, ``failed``, ``skipped``)."""
    outcomes: list[str] = []
    barrier = threading.Barrier(n)
    failed = threading.Event()

    def copy() -> None:
        barrier.wait()
        claim = dedupe.claim("seen:e1")
        if claim is None:
            outcomes.append("skipped")
            return
        time.sleep(run)
        if fail and not failed.is_set():
            failed.set()
            dedupe.release(claim)
            outcomes.append("failed")
            return
        dedupe.done("seen:e1", claim)
        outcomes.append("ran")

    threads = [threading.Thread(target=copy) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return sorted(outcomes)


def test_of_copies_at_the_same_instant_one_runs(dedupe: Dedupe) -> None:
    assert _copies(dedupe, 4, run=0.2) == ["ran", "skipped", "skipped", "skipped"]
    assert dedupe.client.get("seen:e1") == b"1"
    assert not dedupe.state.claims


def test_a_failed_run_hands_the_event_to_a_waiting_copy(dedupe: Dedupe) -> None:
    assert _copies(dedupe, 2, run=0.1, fail=True) == ["failed", "ran"]


def test_the_claim_of_a_run_that_died_expires_after_a_lease(dedupe: Dedupe) -> None:
    assert dedupe.claim("seen:e1") is not None  # and the run dies: no done, no release
    t0 = time.monotonic()
    claim = dedupe.claim("seen:e1")
    waited = time.monotonic() - t0
    assert claim is not None and LEASE_MS / 1000 * 0.5 < waited < 10


def test_refresh_extends_only_claims_still_held(dedupe: Dedupe) -> None:
    client = dedupe.client
    mine = dedupe.claim("seen:a")
    assert mine is not None
    dedupe.claim("seen:b")
    client.set("seen:b", b"run:someone-else", px=LEASE_MS)  # expired, taken by another run
    time.sleep(0.2)
    refresh_claims(client, dedupe.state, 10_000)
    assert client.pttl("seen:a") > 5_000
    assert client.pttl("seen:b") <= LEASE_MS
    dedupe.release(mine)
    assert client.get("seen:a") is None
