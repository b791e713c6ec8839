"""Dedupe: a subscription with ``dedupe=True`` runs its handler once per event id, even when
two copies of the event run at the same instant (a reclaim of a slow handler, an event
published twice, a redelivery after a crash).

The ``seen`` key of an event (``keys.seen``) is the only state:

- absent: no run has started, or the last one failed and released it;
- ``run:<token>``: a run holds the claim.  It lives one lease (``lease_ms``) and the worker
  running it refreshes it with its leases (:func:`refresh_claims`), so the claim of a run
  killed with its process is free again within one lease: about when its entry is
  reclaimed;
- ``1``: a run succeeded; kept ``dedupe_ttl_ms``.

Claiming is one ``SET key run:<token> NX PX <lease> GET`` (atomic: of two copies only one
gets it).  A copy that finds a claim waits until it resolves: ``1`` (the other run
succeeded: this copy is a duplicate, acked without running) or gone (it failed or died:
this copy claims and runs).  A failed run releases its claim (compare-and-delete), so its
retry, or a copy waiting meanwhile, runs at once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..backend.scripts import script

if TYPE_CHECKING:
    from .broker import QueueState

__all__ = ["Claim", "Dedupe", "refresh_claims"]

DONE = b"1"
#: How often a copy waiting on another run's claim looks again.
WAIT_POLL_S = 0.05


@dataclass(frozen=True)
class Claim:
    """A claim this worker holds on one event id."""

    key: str
    token: bytes


class Dedupe:
    """Claims of one subscription's runs (thread-safe: worker threads claim concurrently)."""

    def __init__(self, client: Any, state: QueueState, lease_ms: int, ttl_ms: int) -> None:
        self.client = client
        self.state = state
        self.lease_ms = lease_ms
        self.ttl_ms = ttl_ms

    def claim(self, key: str) -> Claim | None:
        """Claim ``key`` for a run, waiting while another run holds it; None when the event
        was already handled (the caller skips the handler)."""
        token = b"run:" + uuid.uuid4().hex.encode()
        while True:
            held = self.client.set(key, token, nx=True, px=self.lease_ms, get=True)
            if held is None:
                claim = Claim(key, token)
                with self.state.cond:
                    self.state.claims[key] = token
                return claim
            if held == DONE:
                return None
            time.sleep(WAIT_POLL_S)  # another run holds it: it succeeds, fails or expires

    def done(self, key: str, claim: Claim | None) -> None:
        """The run succeeded: mark the event handled (for ``dedupe_ttl_ms``).  ``claim`` is
        None for a run that took none (a targeted replay)."""
        if claim is not None:
            self._forget(claim)
        self.client.set(key, DONE, px=self.ttl_ms)

    def release(self, claim: Claim) -> None:
        """The run failed: free the claim (only if it is still ours) so the event can run."""
        self._forget(claim)
        script("claims").run(self.client, [claim.key], ["release", self.lease_ms, claim.token])

    def _forget(self, claim: Claim) -> None:
        with self.state.cond:
            self.state.claims.pop(claim.key, None)


def refresh_claims(client: Any, state: QueueState, lease_ms: int) -> None:
    """Extend the claims of the runs in progress by one lease (the consumer's maintenance)."""
    if not state.claims:
        return
    with state.cond:
        held = list(state.claims.items())
    for i in range(0, len(held), 500):
        chunk = held[i : i + 500]
        script("claims").run(client, [k for k, _ in chunk],
                             ["refresh", lease_ms, *(t for _, t in chunk)])
