"""The replay pacer on a fake clock: evenly spaced batches from the first, no bursts."""

from __future__ import annotations

import threading

import pytest

from chi_redis.ops import replay_run
from chi_redis.ops.replay_run import Pacer, paced_batch_size


class Clock:
    """A monotonic clock that only sleeping moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s > 0
        self.now += s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(replay_run.time, "monotonic", c.monotonic)
    monkeypatch.setattr(replay_run.time, "sleep", c.sleep)
    return c


def test_batches_shrink_to_a_tenth_of_a_second_at_the_rate() -> None:
    assert paced_batch_size(1000, 250) == 25
    assert paced_batch_size(10, 250) == 10  # a smaller batch size stays
    assert paced_batch_size(500, 2) == 1  # never below one event
    assert paced_batch_size(500, None) == 500  # no rate: untouched


def test_the_first_batch_goes_at_once_and_the_rest_evenly(clock: Clock) -> None:
    pacer = Pacer(250)
    sent_at = []
    for _ in range(5):
        pacer.wait(25)
        sent_at.append(round(clock.now - 1000.0, 6))
    assert sent_at == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_a_run_that_fell_behind_does_not_catch_up_in_a_burst(clock: Clock) -> None:
    pacer = Pacer(100)
    pacer.wait(10)
    clock.now += 5.0  # the target stalled for 5 s
    sent_at = []
    for _ in range(3):
        pacer.wait(10)
        sent_at.append(round(clock.now - 1005.0, 6))
    assert sent_at == [0.0, 0.1, 0.2]  # not 50 batches at once


def test_no_rate_never_waits(clock: Clock) -> None:
    pacer = Pacer(None)
    for _ in range(100):
        pacer.wait(1000)
    assert clock.now == 1000.0


def test_a_stop_ends_the_wait(clock: Clock) -> None:
    stop = threading.Event()
    pacer = Pacer(1, stop)
    pacer.wait(1)
    stop.set()
    pacer.wait(1)  # would wait a second
    assert clock.now == 1000.0
