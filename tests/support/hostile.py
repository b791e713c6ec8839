"""Hostile input shared by the name tests (tests/unit/test_names.py) and the security suite
(tests/reliability/security): strings that must never become part of a Redis key."""

from __future__ import annotations

__all__ = ["INVALID_NAMES", "VALID_NAMES"]

# Every invalid name of docs/design.md §4.2 (numeric-only names are valid here: the
# documented pattern allows a name to start with a digit, see names.NAME_PATTERN).
INVALID_NAMES = [
    "",
    " ",
    "a b",
    "orders\n",
    "orders\r\nFLUSHALL",
    "orders:*",
    "*",
    "orders?",
    "[a-z]",
    "../x",
    "chi:dlq:orders",  # a reserved key prefix
    "ORDERS",
    "a" * 129,
    "x" * (1 << 20),
    "orders\x00",
    "\u043erders",  # Cyrillic o
    "\u202eorders",  # right-to-left override
    "{slot}",
    "orders{x}",
    "tab\there",
    ".leading-dot",
    "-leading-dash",
    "orders/x",
]
VALID_NAMES = ["a", "orders", "user.signed_up", "order_item-v2", "a" * 128, "0", "2024.q1", "x.y.z"]
