"""A fake mail service that records what it sent (in Redis, so tests of real worker
processes can see it)."""

from __future__ import annotations

import threading

import msgspec
import redis


class Mail(msgspec.Struct):
    to: str
    subject: str
    body: str
    event_id: str


class FakeMailer:
    """Records mails in a Redis list (``key``) and in memory; never sends anything."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key
        self.sent: list[Mail] = []
        self._lock = threading.Lock()

    def send(self, mail: Mail) -> None:
        self.client.rpush(self.key, msgspec.json.encode(mail))
        with self._lock:
            self.sent.append(mail)

    def recorded(self) -> list[Mail]:
        """Every mail recorded under ``key`` by any process."""
        return [msgspec.json.decode(m, type=Mail) for m in self.client.lrange(self.key, 0, -1)]
