"""The charts' samples: throughput from entries-added between the sampler's own ticks."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from chi_redis import Event, EventBus
from chi_redis.console.sampler import Sampler, sparkline

pytestmark = pytest.mark.redis


def test_throughput_and_lag_come_from_the_sampler_ticks_only(
    bus: EventBus, subscribe: Callable[..., None],
) -> None:
    subscribe("audit", "order", ["order.*"])
    sampler = Sampler(bus, interval=0.5)
    first = sampler.take()
    bus.publish_batch([Event(type="order.created", data={"i": i}) for i in range(12)])
    sampler.latest()  # a page's fresh numbers are not a point of the charts
    second = sampler.take()
    assert len(sampler.history()) == 2
    assert second.added["order"] - first.added.get("order", 0) == 12
    [(at, rate)] = sampler.rates()["order"]
    assert at == second.at and rate == pytest.approx(12 / (second.at - first.at))
    assert [v for _, v in sampler.lags()["audit"]] == [0.0, 12.0]


def test_a_sparkline_is_an_svg_of_numbers() -> None:
    assert "collecting" in sparkline([(1.0, 3.0)])
    svg = sparkline([(0.0, 0.0), (30.0, 5.0), (60.0, 10.0)], width=100, height=20)
    points = re.search(r'points="([^"]+)"', svg)
    assert points is not None
    xy = [tuple(map(float, p.split(","))) for p in points.group(1).split()]
    assert [x for x, _ in xy] == [1.0, 50.0, 99.0]
    assert xy[0][1] == 19.0 and xy[2][1] == 3.0  # the highest value nearest the top
