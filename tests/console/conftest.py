"""Fixtures of the console tests: the app on the real Redis, seeded subscriptions.

- ``make_console(token=..., loopback=..., redact=...)``: a :class:`Console` on this test's
  bus and a Starlette ``TestClient`` of its app (sampler not started: pages take their
  own fresh sample);
- ``subscribe(name, topic, types)``: a registry record and a consumer group, as a worker
  would leave them (no worker runs in these tests);
- ``dead_letter(sub, i)``: one dead letter of an event, written as a consumer writes it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from chi_redis import EventBus
from chi_redis.console.app import Console, create_app
from chi_redis.console.security import CSRF_COOKIE, Credentials
from chi_redis.runtime.deadletters import dead_letter_fields, encode_body
from chi_redis.runtime.subscriptions import SubscriptionRecord, encode_record

TOKEN = "s3cret-console-token"


@pytest.fixture
def client(real_client: redis.Redis) -> redis.Redis:
    return real_client


@pytest.fixture
def bus(client: redis.Redis, ns: str) -> EventBus:
    return EventBus(client, namespace=ns)


@pytest.fixture
def make_console(bus: EventBus) -> Iterator[Callable[..., tuple[Console, TestClient]]]:
    made: list[TestClient] = []

    def make(token: str | None = TOKEN, loopback: bool = True,
             redact: list[str] | None = None, **kw: Any) -> tuple[Console, TestClient]:
        console = Console(bus, Credentials(token=token, **kw), loopback=loopback,
                          redact_fields=redact)
        tc = TestClient(create_app(console, sample=False), follow_redirects=False)
        tc.__enter__()
        made.append(tc)
        return console, tc

    yield make
    for tc in made:
        tc.__exit__(None, None, None)


def csrf_of(tc: TestClient, page: str = "/") -> str:
    """Load ``page`` (which sets the CSRF cookie) and return the token its forms carry."""
    html = tc.get(page).text
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    token = m.group(1) if m else tc.cookies.get(CSRF_COOKIE)
    assert token, "no CSRF token on " + page
    return token


def login(tc: TestClient, token: str = TOKEN) -> None:
    done = tc.post("/login", data={"csrf": csrf_of(tc, "/login"), "user": "",
                                   "password": token, "next": "/"})
    assert done.status_code == 303, done.text


@pytest.fixture
def subscribe(bus: EventBus, client: redis.Redis) -> Callable[..., None]:
    def make(name: str, topic: str, types: list[str], start: str = "0") -> None:
        record = SubscriptionRecord(name=name, types=tuple(types), topics=(topic,),
                                    last_seen_ms=int(time.time() * 1000))
        client.hset(bus.keys.subs(), name, encode_record(record))
        client.sadd(bus.keys.topics(), topic)
        client.xgroup_create(bus.keys.stream(topic), name, id=start, mkstream=True)
        client.xgroup_create(bus.keys.queue(name), name, id="0", mkstream=True)

    return make


@pytest.fixture
def dead_letter(bus: EventBus, client: redis.Redis) -> Callable[..., str]:
    def make(sub: str, i: int, **data: Any) -> str:
        import json

        payload = json.dumps({"i": i, **data}).encode()
        fields = {b"id": f"ev-{i}".encode(), b"type": b"pay.failed", b"ts": b"1700000000000000",
                  b"ver": b"1.0", b"meta": b"{}", b"enc": b"js", b"data": payload}
        entry = dead_letter_fields(
            sub=sub, reason="retries_exhausted",
            exc=ValueError(f"boom {i}: password=hunter2"), kind="event",
            body=encode_body(fields), event_id=f"ev-{i}", type_="pay.failed", topic="pay",
            source_stream=bus.keys.stream("pay"), source_id=f"1700000000000-{i}",
        )
        return str(client.xadd(bus.keys.dlq(sub), entry).decode())

    return make
